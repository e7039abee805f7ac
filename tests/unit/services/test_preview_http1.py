"""The proxy's upstream HTTP/1.1 client (``app.services.previews.http1``) against a scripted server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import h11
import pytest

from app.services.previews.http1 import Http1Pool, UpstreamConnectError, UpstreamError, _Connection

#: Answers one parsed request: the raw bytes to write back, and whether to keep the connection.
Respond = Callable[[h11.Request, bytes], Awaitable[tuple[bytes, bool]]]


def answer(body: bytes = b"ok", *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


async def keep_alive(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
    return answer(body or request.target), True


class Server:
    """Parses requests with h11; answers with whatever ``respond`` returns, byte for byte."""

    def __init__(self, respond: Respond = keep_alive) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.closes = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()

    def pool(self, **options: float) -> Http1Pool:
        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", self.port)

        return Http1Pool(connect, default_headers=[(b"host", b"sandbox")], **options)  # type: ignore[arg-type]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        leftover = b""
        try:
            while True:
                http = h11.Connection(h11.SERVER)
                if leftover:  # (empty bytes would tell h11 the connection closed)
                    http.receive_data(leftover)
                request, body = None, b""
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        http.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # the client closed
                        return
                assert request is not None
                leftover = http.trailing_data[0]
                self.requests.append((request, body))
                raw, keep = await self.respond(request, body)
                writer.write(raw)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, h11.RemoteProtocolError):
            return
        finally:
            writer.close()
            self.closes += 1

    async def closed(self, count: int = 1) -> None:
        """Until the server has closed ``count`` connections."""
        for _ in range(500):
            if self.closes >= count:
                await asyncio.sleep(0.05)  # and the client's loop has seen it
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the server closed {self.closes} connections, not {count}")


async def get(pool: Http1Pool, target: bytes = b"/", method: bytes = b"GET") -> tuple[int, bytes]:
    async with pool.request(method, target, []) as response:
        return response.status, b"".join([chunk async for chunk in response.aiter_stream()])


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_keep_alive_reuses_one_connection() -> None:
    async with Server() as server:
        pool = server.pool()
        assert await get(pool, b"/a") == (200, b"/a")
        assert await get(pool, b"/b") == (200, b"/b")
        assert server.connections == 1 and pool.idle_count == 1
        assert server.requests[0][0].headers[0] == (b"host", b"sandbox")
        pool.close()


@pytest.mark.parametrize("close", ["Connection: close", "HTTP/1.0"])
async def test_an_answer_that_ends_the_connection_is_not_reused(close: str) -> None:
    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        if close == "HTTP/1.0":
            return b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", False
        return answer(b"ok", close), False

    async with Server(respond) as server:
        pool = server.pool()
        assert await get(pool) == (200, b"ok")
        assert pool.idle_count == 0
        assert await get(pool) == (200, b"ok")
        assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        return answer(), False  # closes after answering, without saying so

    async with Server(respond) as server:
        pool = server.pool()
        assert await get(pool) == (200, b"ok")
        await server.closed()
        assert await get(pool) == (200, b"ok")
        assert server.connections == 2 and len(server.requests) == 2


async def test_a_close_racing_a_reuse_is_retried_once_only_when_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        return answer(), False

    # The race: the server's close has not reached the loop when the connection is taken.
    monkeypatch.setattr(_Connection, "alive", lambda self: True)
    async with Server(respond) as server:
        pool = server.pool()
        assert await get(pool) == (200, b"ok")
        await server.closed(1)
        assert await get(pool) == (200, b"ok")  # GET: sent again on a fresh connection
        assert server.connections == 2
        await server.closed(2)
        with pytest.raises(UpstreamError):
            await get(pool, method=b"POST")  # not idempotent: not sent twice
        await get(pool)  # a fresh connection (the broken one was closed)
        await server.closed(3)
        with pytest.raises(UpstreamError):
            async with pool.request(b"PUT", b"/", [(b"content-length", b"1")], chunks(b"x")):
                pass  # a streamed body cannot be replayed
        assert len(server.requests) == 3


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_request_bodies_stream_with_either_framing(framing: str) -> None:
    async with Server() as server:
        pool = server.pool()
        headers = [(b"content-length", b"11")] if framing == "content-length" else []
        async with pool.request(b"POST", b"/", headers, chunks(b"hello", b" ", b"world")) as response:
            assert b"".join([c async for c in response.aiter_stream()]) == b"hello world"
        request, body = server.requests[0]
        sent = dict(request.headers)
        assert body == b"hello world"
        if framing == "chunked":  # no length given: sent chunked, and only that
            assert sent[b"transfer-encoding"] == b"chunked" and b"content-length" not in sent
        else:
            assert sent[b"content-length"] == b"11" and b"transfer-encoding" not in sent
        assert pool.idle_count == 1


async def test_chunked_answers_and_answers_read_to_eof() -> None:
    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        if request.target == b"/chunked":
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", True
        return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nto the end", False

    async with Server(respond) as server:
        pool = server.pool()
        assert await get(pool, b"/chunked") == (200, b"abcde")
        assert pool.idle_count == 1
        assert await get(pool, b"/eof") == (200, b"to the end")
        assert pool.idle_count == 0  # framed by the close: nothing left to reuse


async def test_two_framings_are_refused() -> None:
    async with Server() as server:
        with pytest.raises(ValueError, match="framing"):
            server.pool().request(b"POST", b"/", [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")])
        assert server.connections == 0


async def test_a_body_that_ends_short_is_an_upstream_error() -> None:
    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", False

    async with Server(respond) as server:
        pool = server.pool()
        with pytest.raises(UpstreamError):
            await get(pool)
        assert pool.idle_count == 0


async def test_the_pool_bounds_open_and_idle_connections() -> None:
    release = asyncio.Event()

    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        await release.wait()
        return answer(), True

    async with Server(respond) as server:
        pool = server.pool(max_connections=2, max_idle=1, wait_seconds=0.3)
        first = asyncio.ensure_future(get(pool))
        second = asyncio.ensure_future(get(pool))
        await asyncio.sleep(0.1)
        with pytest.raises(UpstreamError, match="busy"):
            await get(pool)  # a third waits for a slot, in vain
        release.set()
        assert await first == await second == (200, b"ok")
        assert server.connections == 2 and pool.idle_count == 1
        pool.close()


async def test_a_client_that_leaves_mid_body_discards_the_connection() -> None:
    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000, True

    async with Server(respond) as server:
        pool = server.pool()
        async with pool.request(b"GET", b"/", []) as response:
            async for _ in response.aiter_stream():
                break  # the client went away after the first piece
        assert pool.idle_count == 0
        await server.closed()  # the server saw the connection end
        task = asyncio.ensure_future(get(pool))
        await asyncio.sleep(0.1)
        task.cancel()  # cancelled in the middle: the connection is not pooled either
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert pool.idle_count == 0


async def test_nothing_listening_is_a_connect_error() -> None:
    async with Server() as server:
        port = server.port
    pool = Http1Pool(lambda: asyncio.open_connection("127.0.0.1", port), default_headers=[(b"host", b"sandbox")])
    with pytest.raises(UpstreamConnectError):
        await get(pool)


@pytest.mark.parametrize("ending", ["kept", "Connection: close", "short"])
async def test_a_large_counted_body_is_relayed_whole_and_its_connection_kept_only_when_clean(ending: str) -> None:
    size = (1 << 20) + 7  # past the size from which a Content-Length body is only counted
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def respond(request: h11.Request, body: bytes) -> tuple[bytes, bool]:
        if ending == "short":
            return f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode() + payload[:-1], False
        extra = ("Connection: close",) if ending != "kept" else ()
        return answer(payload, *extra), ending == "kept"

    async with Server(respond) as server:
        pool = server.pool()
        for _ in range(2):
            if ending == "short":
                with pytest.raises(UpstreamError):
                    await get(pool)
            else:
                async with pool.request(b"GET", b"/", []) as response:
                    pieces = [chunk async for chunk in response.aiter_stream()]
                    assert response.complete
                assert b"".join(pieces) == payload and len(pieces) > 1
        assert server.connections == (1 if ending == "kept" else 2)
        assert pool.idle_count == (1 if ending == "kept" else 0)


async def test_a_target_http_1_1_cannot_carry_is_an_upstream_error() -> None:
    async with Server() as server:
        with pytest.raises(UpstreamError):
            server.pool().request(b"GET", "/é".encode(), [])
        assert server.connections == 0
