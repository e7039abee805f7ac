"""``exec`` in a container with a deadline the service enforces.

The Engine has no exec timeout and no "kill this exec". So every command runs
under a small ``sh`` wrapper that makes it a process-group (session) leader
with ``setsid`` and writes that group id to a file; at the deadline a second
exec (as the same user) kills the whole group, and every process that still
carries this exec's marker variable, which catches children that left the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence

from aiodocker.stream import Stream

from app.errors import BadRequest, ProviderUnavailable, SandboxNotRunning
from app.providers.base import ExecEvent, ExecResult, check_argv
from app.providers.docker.engine import EngineClient, half_close, mapped_errors
from app.providers.exec_wrapper import EXEC_MARKER, killer_argv, wrapped_argv
from app.providers.streaming import OutputPump, collect, once

#: Seconds the kill exec itself may take.
KILL_TIMEOUT_SECONDS = 15.0
#: Seconds to wait for the Engine to record an exit code after output ended.
EXIT_CODE_WAIT_SECONDS = 5.0
_STDIN_CHUNK = 64 * 1024


def exec_env(env: Mapping[str, str] | None, token: str) -> list[str]:
    """The Engine's ``Env`` list of one exec: ``env`` checked, plus the exec's marker."""
    items = []
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value or key == EXEC_MARKER:
            raise BadRequest(f"invalid environment variable name or value: {key!r}", field="env")
        items.append(f"{key}={value}")
    items.append(f"{EXEC_MARKER}={token}")
    return items


async def _feed_stdin(stream: Stream, data: AsyncIterator[bytes]) -> None:
    async for chunk in data:
        view = memoryview(chunk)
        for start in range(0, len(view), _STDIN_CHUNK):
            await stream.write_in(bytes(view[start : start + _STDIN_CHUNK]))
    half_close(stream)


async def run_exec(
    engine: EngineClient,
    container: str,
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: bytes | None,
    max_output_bytes: int,
    user: str = "",
) -> ExecResult:
    """Run ``argv`` in ``container``; see ``Provider.exec`` for the contract."""
    events = stream_exec(
        engine,
        container,
        argv,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=once(stdin) if stdin is not None else None,
        max_output_bytes=max_output_bytes,
        user=user,
    )
    return await collect(events)


async def stream_exec(
    engine: EngineClient,
    container: str,
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: AsyncIterator[bytes] | None,
    max_output_bytes: int,
    user: str = "",
) -> AsyncGenerator[ExecEvent, None]:
    """Run ``argv`` in ``container`` reading the attach stream as it comes; see ``Provider.exec_stream``."""
    check_argv(argv)
    if cwd is not None and (not cwd or cwd.startswith("-") or "\0" in cwd):
        raise BadRequest(f"invalid working directory: {cwd!r}", field="cwd")
    if timeout <= 0:
        raise BadRequest("timeout must be positive", field="timeout")
    token = secrets.token_hex(8)
    created = await engine.call(
        "POST",
        f"containers/{container}/exec",
        body={
            "AttachStdin": stdin is not None,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": wrapped_argv(cwd, argv),
            "Env": exec_env(env, token),
            "User": user,
        },
        ref=container,
    )
    exec_id = created["Id"]
    pump = OutputPump(max_output_bytes)
    stream = await engine.exec_stream(exec_id, container)
    feeder = asyncio.create_task(_feed_stdin(stream, stdin)) if stdin is not None else None
    finished = False

    async def read() -> None:
        with mapped_errors(container, what="exec output"):
            while (message := await stream.read_out()) is not None:
                await pump.put("stderr" if message.stream == 2 else "stdout", message.data)

    async def kill() -> None:
        await _kill_group(engine, container, token, user)

    try:
        async for chunk in pump.chunks(read(), timeout=timeout, kill=kill):
            yield chunk
        finished = True
    finally:
        if feeder is not None:
            feeder.cancel()
            # a command that stops reading its stdin early is not an error
            await asyncio.gather(feeder, return_exceptions=True)
        if not finished:
            # Nobody reads on (disconnect, cancellation): do not leave the command running.
            await asyncio.shield(kill_quietly(engine, container, token, user))
        await asyncio.shield(stream.close())
    yield pump.result(0 if pump.timed_out else await recorded_exit_code(engine, exec_id, container))


async def _kill_group(engine: EngineClient, container: str, token: str, user: str = "") -> None:
    """Kill the exec's process group (and marked strays) with a second exec as the same user."""
    created = await engine.call(
        "POST",
        f"containers/{container}/exec",
        body={
            "AttachStdout": True,
            "AttachStderr": True,
            "Cmd": killer_argv(token),
            # As the command's own user: with a non-root container user the Engine
            # gives even a root exec no capabilities, so root could not signal it.
            "User": user,
        },
        ref=container,
    )
    stream = await engine.exec_stream(created["Id"], container)
    try:
        async with asyncio.timeout(KILL_TIMEOUT_SECONDS):
            while await stream.read_out() is not None:
                pass
    except TimeoutError:
        pass  # the output drain below still bounds the whole exec
    finally:
        await stream.close()


async def kill_quietly(engine: EngineClient, container: str, token: str, user: str) -> None:
    # Best effort on cancellation: the container may be gone already.
    with contextlib.suppress(Exception):
        await _kill_group(engine, container, token, user)


async def recorded_exit_code(engine: EngineClient, exec_id: str, container: str) -> int:
    """The exit code the Engine recorded; it can lag the end of the output briefly."""
    deadline = time.monotonic() + EXIT_CODE_WAIT_SECONDS
    delay = 0.005
    while True:
        info = await engine.call("GET", f"exec/{exec_id}/json", ref=container)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() >= deadline:
            state = await engine.call("GET", f"containers/{container}/json", ref=container)
            if not state.get("State", {}).get("Running"):
                raise SandboxNotRunning(f"sandbox {container!r} stopped while the command ran", ref=container)
            raise ProviderUnavailable("the Docker Engine did not report the command's exit code")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
