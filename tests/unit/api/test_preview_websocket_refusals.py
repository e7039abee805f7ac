"""A preview WebSocket refused before the upgrade (``relay_websocket``, ``refuse_websocket``): what the client sees."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from app.api.previews.gateway import refuse_websocket
from app.api.previews.relay import Message, relay_websocket
from app.errors import SandboxControlError
from app.providers.ports import PortEndpoint, loopback_endpoint
from app.services.previews import PreviewAccess, Upstreams
from app.storage.state.previews import PreviewRecord

DENIAL = {"websocket.http.response": {}}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def refused(extensions: dict[str, Any]) -> list[Message]:
    """The messages a client's WebSocket to a preview of a port where nothing listens gets."""
    port = closed_port()

    async def port_endpoint(ref: str, port: int) -> PortEndpoint:
        return loopback_endpoint(port)

    upstreams = Upstreams(SimpleNamespace(port_endpoint=port_endpoint))  # type: ignore[arg-type]
    now = datetime.now(UTC)
    record = PreviewRecord("pv" + "0" * 20, "sbx_1", port, False, now, now + timedelta(hours=1))
    scope = {"type": "websocket", "extensions": extensions}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def recheck() -> None:
        raise AssertionError("never accepted: nothing to recheck")

    async def refuse(exc: SandboxControlError) -> None:
        await refuse_websocket(scope, receive, send, exc)

    await relay_websocket(receive, send, upstreams, PreviewAccess(record, "ref"), "/ws", [], [], None, recheck, refuse)
    await upstreams.aclose()
    return sent


async def test_a_port_that_does_not_answer_is_a_502_with_its_code_not_a_bare_403() -> None:
    start, body = await refused(DENIAL)
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 502)
    assert (b"content-type", b"application/json") in start["headers"]
    assert body["type"] == "websocket.http.response.body"
    assert json.loads(body["body"])["code"] == "preview_upstream_unreachable"


async def test_without_denial_responses_the_websocket_closes_with_4000_plus_the_status() -> None:
    [close] = await refused({})
    assert close["type"] == "websocket.close" and close["code"] == 4502
    assert "port" in close["reason"]
