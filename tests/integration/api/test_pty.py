"""Interactive terminals over a real WebSocket (uvicorn)."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.auth import make_query_token, make_token
from tests.integration.api.test_exec_stream import Live
from tests.integration.api.test_exec_stream import live as live  # the fixture


def ws_url(live: Live, query: str = "") -> str:
    _, sandbox_id, server = live
    return server.url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox_id}/pty{query}"


async def read_until(ws: ClientConnection, needle: bytes) -> bytes:
    seen = b""
    while needle not in seen:
        message = await ws.recv()
        assert isinstance(message, bytes), f"expected terminal bytes, got {message!r}"
        seen += message
    return seen


async def test_shell_echo_resize_and_exit_code(live: Live, api_secret: str) -> None:
    headers = {"Authorization": f"Bearer {make_token(api_secret.encode())}"}
    async with connect(ws_url(live, "?cols=90&rows=20"), additional_headers=headers) as ws:
        await ws.send(b"stty size; echo hi-$((40 + 2))\n")
        assert b"20 90" in await read_until(ws, b"hi-42")
        await ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 33}))
        await ws.send(b"stty size\n")
        await read_until(ws, b"33 120")
        await ws.send(b"exit 3\n")
        final = None
        with pytest.raises(ConnectionClosed):
            while True:
                message = await ws.recv()
                if isinstance(message, str):
                    final = json.loads(message)
    assert final == {"type": "exit", "exit_code": 3}
    assert ws.close_code == 4003


async def test_browser_query_token_and_refusals(live: Live, api_secret: str) -> None:
    _, sandbox_id, _ = live
    path = f"/v1/sandboxes/{sandbox_id}/pty"
    token = make_query_token(api_secret.encode(), path)
    async with connect(ws_url(live, f"?access_token={token}")) as ws:
        await ws.send(b"echo ok-$((1 + 1))\n")
        await read_until(ws, b"ok-2")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(live)):
            pass
    assert refused.value.response.status_code == 403
    other = make_query_token(api_secret.encode(), "/v1/sandboxes/other/pty")
    with pytest.raises(InvalidStatus):
        async with connect(ws_url(live, f"?access_token={other}")):
            pass
    headers = {"Authorization": f"Bearer {make_token(api_secret.encode())}"}
    async with connect(ws_url(live, "?cols=0"), additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4400
