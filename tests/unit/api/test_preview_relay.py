"""The HTTP relay (``app.api.previews.relay``) between fake ASGI callables and a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from app.api.previews.relay import Message, relay_http
from app.providers.ports import PortEndpoint, loopback_endpoint
from app.services.previews import PreviewAccess, Upstreams
from app.storage.state.previews import PreviewRecord

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class Upstream:
    """``/small`` answers at once; ``/stream`` sends one event and then keeps the connection open; a POST
    never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.ended = asyncio.Event()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST "):
                    while await reader.read(65536):  # the upload, until the proxy closes the connection
                        pass
                    return
                if head.startswith(b"GET /small "):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                    continue
                writer.write(HEAD + b"c\r\ndata: tick\n\n\r\n")
                await reader.read(1)  # until the proxy closes the connection
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            self.ended.set()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, Upstreams, PreviewAccess]]:
    async with Upstream() as server:

        async def port_endpoint(ref: str, port: int) -> PortEndpoint:
            return loopback_endpoint(server.port)

        upstreams = Upstreams(SimpleNamespace(port_endpoint=port_endpoint))  # type: ignore[arg-type]
        now = datetime.now(UTC)
        record = PreviewRecord("pv" + "0" * 20, "sbx_1", server.port, False, now, now + timedelta(hours=1))
        yield server, upstreams, PreviewAccess(record, "ref")
        await upstreams.aclose()


async def test_a_small_answer_is_two_messages_and_its_connection_is_kept(
    upstream: tuple[Upstream, Upstreams, PreviewAccess],
) -> None:
    server, upstreams, access = upstream
    sent: list[Message] = []
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    for _ in range(2):
        sent.clear()
        await relay_http(receive, send, upstreams, access, "GET", "/small", [], False, 1 << 20)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[1]["body"] == b"hello" and sent[1]["more_body"] is False
    assert server.connections == 1


async def test_a_client_that_leaves_ends_the_upstream_exchange(
    upstream: tuple[Upstream, Upstreams, PreviewAccess],
) -> None:
    server, upstreams, access = upstream
    gone = asyncio.Event()
    bodies: list[Any] = []

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            gone.set()  # the client leaves after the first event

    await asyncio.wait_for(relay_http(receive, send, upstreams, access, "GET", "/stream", [], False, 1 << 20), 5)
    assert bodies == [b"data: tick\n\n"]
    await asyncio.wait_for(server.ended.wait(), 5)  # the proxy closed its upstream connection
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_client_that_leaves_during_its_upload_ends_the_exchange_quietly(
    upstream: tuple[Upstream, Upstreams, PreviewAccess],
) -> None:
    server, upstreams, access = upstream
    messages: list[Message] = [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(0.01)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    chunked = [(b"transfer-encoding", b"chunked")]
    await asyncio.wait_for(relay_http(receive, send, upstreams, access, "POST", "/upload", chunked, True, 1 << 20), 5)
    assert sent == []
    await asyncio.wait_for(server.ended.wait(), 5)
