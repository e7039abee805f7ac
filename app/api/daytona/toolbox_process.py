"""Daytona's toolbox process API (``/daytona/toolbox/{id}/process``): commands, code and sessions.

``execute`` runs a shell command line (``sh -c``) and answers Daytona's combined
``result`` (stdout, then stderr) and ``exitCode``; a command past its
``timeout`` is Daytona's 408 (``PROCESS_EXECUTION_TIMEOUT``: the SDK raises
``DaytonaProcessExecutionTimeoutError``). Sessions are background processes
(``app.services.daytona_sessions``).
"""

from __future__ import annotations

import contextlib
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from app.api.daytona.deps import DaytonaSessionsDep
from app.api.deps import SandboxesDep
from app.errors import BadRequest, CommandTimedOut, SandboxControlError
from app.schemas.daytona import (
    CodeRunRequest,
    CreateSessionRequest,
    ExecuteRequest,
    SessionExecuteRequest,
    SessionInputRequest,
    exec_request,
)
from app.schemas.sandboxes import ExecRequest
from app.services.daytona_sessions import CommandOutput, DaytonaSessions, SessionCommand
from app.services.sandboxes import SandboxService

router = APIRouter(prefix="/daytona/toolbox/{sandbox_id}/process", tags=["daytona"], include_in_schema=False)

SessionId = Annotated[str, Path(min_length=1, max_length=128)]
#: How code of each language runs: the interpreter's argv before the code's own argv.
INTERPRETERS = {"python": ["python3", "-c"], "javascript": ["node", "-e"]}
#: What precedes each chunk of a followed log, per stream (the SDK's ``STDOUT_PREFIX``/``STDERR_PREFIX``).
STREAM_MARKERS = {"stdout": b"\x01\x01\x01", "stderr": b"\x02\x02\x02"}


async def _run(sandboxes: SandboxesDep, sandbox_id: str, request: ExecRequest) -> dict[str, Any]:
    result = await sandboxes.exec(sandbox_id, request)
    if result.timed_out:
        deadline = request.timeout_seconds or sandboxes.settings.exec_default_timeout
        raise CommandTimedOut(f"command execution timeout after {deadline:g} s")
    output = (result.stdout + result.stderr).decode(errors="replace")
    return {"exitCode": result.exit_code, "result": output}


def _timeout(sandboxes: SandboxService, seconds: int | None) -> float | None:
    """Daytona's timeout (0 or absent: the service's default), capped at ``SANDBOX_EXEC_MAX_TIMEOUT``.

    Capped rather than refused: Daytona takes any timeout, and a command cut at the cap still ends
    with the 408 that tells the caller.
    """
    return min(float(seconds), sandboxes.settings.exec_max_timeout) if seconds else None


@router.post("/execute")
async def execute(sandbox_id: str, body: ExecuteRequest, sandboxes: SandboxesDep) -> dict[str, Any]:
    """One command line; its combined output and exit code (a non-zero exit is a result)."""
    timeout = _timeout(sandboxes, body.timeout)
    request = exec_request(command=body.command, cwd=body.cwd or None, env=body.envs or {}, timeout_seconds=timeout)
    return await _run(sandboxes, sandbox_id, request)


@router.post("/code-run")
async def code_run(sandbox_id: str, body: CodeRunRequest, sandboxes: SandboxesDep) -> dict[str, Any]:
    """Run a snippet (Python, or JavaScript where ``node`` is installed); output as ``execute``'s."""
    interpreter = INTERPRETERS.get(body.language.lower())
    if interpreter is None:
        raise BadRequest(f"language {body.language!r} is not supported (use one of {sorted(INTERPRETERS)})")
    argv = [*interpreter, body.code, *(body.argv or [])]
    request = exec_request(command=argv, env=body.envs or {}, timeout_seconds=_timeout(sandboxes, body.timeout))
    answer = await _run(sandboxes, sandbox_id, request)
    return {**answer, "artifacts": {"charts": []}}


# -- sessions ---------------------------------------------------------------------------


def _session(session_id: str, commands: list[SessionCommand]) -> dict[str, Any]:
    return {"sessionId": session_id, "commands": [_command(c) for c in commands]}


def _command(command: SessionCommand) -> dict[str, Any]:
    return {"id": command.id, "command": command.command, "exitCode": command.exit_code}


def _output(output: CommandOutput) -> dict[str, Any]:
    return {"output": output.output, "stdout": output.stdout, "stderr": output.stderr}


@router.post("/session", status_code=201)
async def create_session(sandbox_id: str, body: CreateSessionRequest, sessions: DaytonaSessionsDep) -> Response:
    await sessions.create(sandbox_id, body.session_id)
    return Response(status_code=201)


@router.get("/session")
async def list_sessions(sandbox_id: str, sessions: DaytonaSessionsDep) -> list[dict[str, Any]]:
    return [_session(name, commands) for name, commands in await sessions.list(sandbox_id)]


@router.get("/session/{session_id}")
async def get_session(sandbox_id: str, session_id: SessionId, sessions: DaytonaSessionsDep) -> dict[str, Any]:
    return _session(session_id, await sessions.commands(sandbox_id, session_id))


@router.delete("/session/{session_id}", status_code=204)
async def delete_session(sandbox_id: str, session_id: SessionId, sessions: DaytonaSessionsDep) -> Response:
    await sessions.delete(sandbox_id, session_id)
    return Response(status_code=204)


@router.post("/session/{session_id}/exec", response_model=None)
async def session_exec(
    sandbox_id: str, session_id: SessionId, body: SessionExecuteRequest, sessions: DaytonaSessionsDep
) -> JSONResponse:
    """Run a command in the session: to its end (200, with output), or ``runAsync`` (202, its id at once)."""
    background = body.in_background
    ran = await sessions.execute(sandbox_id, session_id, body.command, wait=not background)
    if background:
        return JSONResponse({"cmdId": ran.id}, status_code=202)
    return JSONResponse({"cmdId": ran.id, "exitCode": ran.exit_code, **_output(ran)})


@router.get("/session/{session_id}/command/{command_id}")
async def get_command(
    sandbox_id: str, session_id: SessionId, command_id: str, sessions: DaytonaSessionsDep
) -> dict[str, Any]:
    return _command(await sessions.command(sandbox_id, session_id, command_id))


@router.get("/session/{session_id}/command/{command_id}/logs")
async def command_logs(
    sandbox_id: str, session_id: SessionId, command_id: str, sessions: DaytonaSessionsDep
) -> dict[str, Any]:
    """The command's output so far (``follow=true`` is the WebSocket below)."""
    return _output(await sessions.logs(sandbox_id, session_id, command_id))


@router.websocket("/session/{session_id}/command/{command_id}/logs")
async def follow_command_logs(websocket: WebSocket, sandbox_id: str, session_id: str, command_id: str) -> None:
    """The command's output from the start and as it comes, as Daytona's toolbox streams it:
    one binary message per chunk after its stream's marker, then close 1000 once it ended."""
    sessions: DaytonaSessions = websocket.app.state.services.daytona_sessions
    await websocket.accept()
    try:
        chunks = await sessions.follow(sandbox_id, session_id, command_id)
    except SandboxControlError as exc:
        await websocket.close(code=4000 + exc.status_code, reason=exc.message[:100])
        return
    # The client leaving ends the send loop (a failed send); the command goes on.
    async with aclosing(chunks):
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            async for chunk in chunks:
                await websocket.send_bytes(STREAM_MARKERS[chunk.stream] + chunk.data)
            await websocket.close(code=1000)


@router.post("/session/{session_id}/command/{command_id}/input")
async def command_input(
    sandbox_id: str, session_id: SessionId, command_id: str, body: SessionInputRequest, sessions: DaytonaSessionsDep
) -> Response:
    await sessions.send_input(sandbox_id, session_id, command_id, body.data.encode())
    return Response(status_code=200)
