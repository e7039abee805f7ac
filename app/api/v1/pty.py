"""``GET /v1/sandboxes/{id}/pty``: an interactive terminal over a WebSocket.

Binary frames carry the terminal's bytes both ways. Text frames from the
client are JSON control messages: ``{"type": "resize", "cols": …, "rows": …}``.
When the shell ends the server sends ``{"type": "exit", "exit_code": N}`` and
closes with code ``4000 + N`` (N is 0 to 255). Refusals close with 4400 (bad
input), 4404 (no such sandbox), 4409 (not running) and the error's message as
the reason; authentication failures are refused at the handshake (see
``AuthMiddleware``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.errors import BadRequest, SandboxControlError
from app.logging import get_logger
from app.providers.terminal import PtySession, check_size
from app.services.container import Services
from app.services.sandboxes import DEFAULT_CWD, command_line

router = APIRouter(tags=["sandboxes"])
log = get_logger("pty")

#: Close code of a shell that exited with status N: ``EXIT_CLOSE_BASE + N``.
EXIT_CLOSE_BASE = 4000
_REFUSAL_CODES = {400: 4400, 404: 4404, 409: 4409}
DEFAULT_SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi"]


@router.websocket("/v1/sandboxes/{sandbox_id}/pty")
async def terminal(websocket: WebSocket, sandbox_id: str, cols: int = 80, rows: int = 24) -> None:
    """An interactive login shell in the sandbox (see the module docstring for the protocol)."""
    services: Services = websocket.app.state.services
    try:
        check_size(cols, rows)
        record = await services.sandboxes.running(sandbox_id)
    except SandboxControlError as exc:
        # Accepted first: a close before the upgrade reaches a browser only as a bare 403.
        await websocket.accept()
        await websocket.close(code=_REFUSAL_CODES.get(exc.status_code, 4500), reason=exc.message[:100])
        return
    assert record.provider_object_id is not None
    argv, env = command_line(record, DEFAULT_SHELL, {"TERM": "xterm-256color"})
    session = services.provider.open_pty(
        record.provider_object_id,
        argv,
        cols=cols,
        rows=rows,
        timeout=services.settings.process_max_seconds,
        cwd=DEFAULT_CWD,
        env=env,
    )
    await websocket.accept()
    # Whichever ends first ends the other: the shell's exit closes the socket, and a
    # client that leaves cancels the output loop, which kills the shell.
    tasks = {asyncio.create_task(_output(websocket, session)), asyncio.create_task(_client_input(websocket, session))}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.shield(session.aclose())


async def _output(websocket: WebSocket, session: PtySession) -> None:
    """The terminal's output until the shell ends, then its exit status and the close."""
    with contextlib.suppress(WebSocketDisconnect):
        async for data in session.output():
            await websocket.send_bytes(data)
        code = await session.exit_code()
        await websocket.send_text(json.dumps({"type": "exit", "exit_code": code}))
        await websocket.close(code=EXIT_CLOSE_BASE + max(0, min(code, 255)))


async def _client_input(websocket: WebSocket, session: PtySession) -> None:
    """Keystrokes and resizes until the client leaves."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes") is not None:
                await session.write(message["bytes"])
            elif message.get("text") is not None:
                try:
                    control = json.loads(message["text"])
                    if not isinstance(control, dict) or control.get("type") != "resize":
                        raise BadRequest("unknown control message")
                    await session.resize(int(control["cols"]), int(control["rows"]))
                except (ValueError, KeyError, TypeError, SandboxControlError) as exc:
                    await websocket.send_text(json.dumps({"type": "error", "error": str(exc)[:200]}))
