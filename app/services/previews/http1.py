"""A small HTTP/1.1 keep-alive client for the proxy's upstream leg: ``h11`` over asyncio streams.

Why not httpcore: profiled behind the proxy, its per-request machinery (URL
objects, pool locks and their async-library detection, layered state) cost more
than everything else a relayed request does. The proxy needs little: one origin
per pool, HTTP/1.1 only, bodies streamed both ways. ``h11`` still frames every
request and parses every answer's head and body, so a sandbox's answers are
checked as strictly; only a large body framed by ``Content-Length`` is counted
instead (a download's bytes need no parsing, and h11 copies each chunk thrice).

A connection goes back to its pool only after a clean exchange (both sides of
``h11`` done); anything else closes it: an error, an answer not read to its end
(the client left), ``Connection: close``, HTTP/1.0, a body that ends at EOF.
A bodiless idempotent request whose reused connection turns out closed before
any answer (the server's keep-alive timeout raced it) is sent once more, on a
new connection.

Errors::

    UpstreamError (ConnectionError)   the exchange failed: socket error or broken HTTP
    └── UpstreamConnectError          no connection could be opened at all

Errors of the request body's own iterator (the client left, a size limit) pass
through unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType

import h11

Headers = list[tuple[bytes, bytes]]
#: Opens one connection to the pool's origin.
Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
#: Bytes read from the upstream at once: a bulk body moves in few, large pieces.
READ_BYTES = 256 * 1024
#: Largest response head accepted (dev servers set big cookies).
MAX_HEAD_BYTES = 100 * 1024
#: Methods sent again, once, when a reused connection turns out closed before answering.
#: Only bodiless requests are retried: a streamed body cannot be replayed.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"DELETE", b"PUT"})


class UpstreamError(ConnectionError):
    """The exchange with the upstream failed: a socket error or HTTP that does not parse."""


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be opened."""


class _Connection:
    """One upstream socket and its HTTP state."""

    __slots__ = ("http", "idle_since", "reader", "received", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.idle_since = 0.0
        #: Whether the current exchange got any byte back (a retry would then be unsafe).
        self.received = False

    def alive(self) -> bool:
        # What the loop already saw (the peer's FIN or RST), without a system call.
        reader = self.reader
        return not (reader.at_eof() or reader.exception() is not None or self.writer.is_closing())

    def close(self) -> None:
        # The transport closes in the background; nothing worth waiting for.
        self.writer.close()

    async def receive(self) -> object:
        """The next HTTP event from the upstream (never ``NEED_DATA``), reading as much as needed."""
        http = self.http
        try:
            event = http.next_event()
            while event is h11.NEED_DATA:
                data = await self.reader.read(READ_BYTES)
                self.received = self.received or bool(data)
                http.receive_data(data)
                event = http.next_event()
        except (OSError, h11.ProtocolError) as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        return event

    def poll(self) -> object:
        """The next HTTP event if it is already read, else ``NEED_DATA`` (never waits)."""
        try:
            return self.http.next_event()
        except h11.ProtocolError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    def write(self, event: h11.Event) -> None:
        try:
            data = self.http.send(event)
        except h11.ProtocolError as exc:  # e.g. more body than its Content-Length said
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        if data:
            self.writer.write(data)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc


class Http1Response:
    """An upstream answer whose body is read with ``aiter_stream``."""

    __slots__ = ("_connection", "_counted", "_keep_alive", "complete", "headers", "status")

    def __init__(self, connection: _Connection, head: h11.Response, method: bytes) -> None:
        self.status: int = head.status_code
        #: Lower-case names, as ASGI wants them.
        self.headers: Headers = list(head.headers)
        #: The body was read to its end.
        self.complete = False
        self._connection = connection
        self._counted = _bulk_length(method, head)
        self._keep_alive = head.http_version == b"1.1" and b"close" not in _tokens(self.headers, b"connection")

    async def aiter_stream(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it; ``UpstreamError`` if it ends short or breaks.

        ``complete`` turns true before the last chunk is yielded when the end is already
        read, so the relay can end its answer with that chunk instead of one more message.
        """
        if self._counted is not None:
            async for chunk in self._counted_body(self._counted):
                yield chunk
            return
        connection = self._connection
        event = await connection.receive()
        while type(event) is h11.Data:
            following = connection.poll()
            self.complete = type(following) is h11.EndOfMessage
            yield bytes(event.data)
            if self.complete:
                return
            event = await connection.receive() if following is h11.NEED_DATA else following
        if type(event) is not h11.EndOfMessage:
            raise UpstreamError("the upstream closed the connection in the middle of the body")
        self.complete = True

    async def _counted_body(self, length: int) -> AsyncIterator[bytes]:
        # A large body framed by Content-Length (h11 parsed and checked the head) is only
        # counted: h11 copies each chunk three times (about 0.4 ms a MiB, a fifth of the proxy's cost).
        connection = self._connection
        buffered, _ = connection.http.trailing_data
        self._keep_alive = self._keep_alive and connection.http.our_state is h11.DONE and len(buffered) <= length
        connection.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)  # the next exchange's
        remaining = length - len(buffered[:length])
        if buffered:
            self.complete = remaining == 0
            yield buffered[:length]
        while remaining:
            try:
                data = await connection.reader.read(min(remaining, READ_BYTES))
            except OSError as exc:
                raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
            if not data:
                raise UpstreamError("the upstream closed the connection in the middle of the body")
            remaining -= len(data)
            self.complete = remaining == 0
            yield data

    def recycle(self) -> bool:
        """Whether the connection can carry another exchange (then made ready for it)."""
        http = self._connection.http
        if not self.complete or http.trailing_data[0]:  # bytes after the answer: no telling what they are
            return False
        if self._counted is not None:
            return self._keep_alive
        if http.our_state is http.their_state is h11.DONE:
            http.start_next_cycle()
            return True
        return False


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    return [token.strip().lower() for key, value in headers if key == name for token in value.split(b",")]


def _bulk_length(method: bytes, head: h11.Response) -> int | None:
    """The body's Content-Length when it is large enough to be counted rather than parsed."""
    if method in (b"HEAD", b"CONNECT") or head.status_code in (204, 304):
        return None  # no body, whatever the headers say (RFC 9112 6.3)
    lengths = [value for key, value in head.headers if key == b"content-length"]
    if not lengths or any(key == b"transfer-encoding" for key, _ in head.headers):
        return None
    length = int(lengths[0])  # h11 checked it is digits and that repeats agree
    return length if length >= READ_BYTES else None


class Http1Pool:
    """Keep-alive connections to one origin: at most ``max_connections`` open, ``max_idle`` kept idle.

    An idle connection is dropped after ``idle_seconds``, or as soon as the loop saw
    the upstream close it. A request waits up to ``wait_seconds`` for a free slot.
    """

    def __init__(
        self,
        connect: Connector,
        *,
        default_headers: Sequence[tuple[bytes, bytes]] = (),
        max_connections: int = 64,
        max_idle: int = 32,
        idle_seconds: float = 30.0,
        wait_seconds: float = 30.0,
    ) -> None:
        self._connect = connect
        self._default_headers = list(default_headers)
        self._slots = asyncio.Semaphore(max_connections)
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.wait_seconds = wait_seconds
        self._idle: list[_Connection] = []
        self._closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def request(
        self, method: bytes, target: bytes, headers: Headers, body: AsyncIterator[bytes] | None = None
    ) -> _Exchange:
        """``async with pool.request(...) as response``: the head is read, the body is not.

        ``headers`` must not frame the body twice; a body without a length goes chunked.
        """
        framing = [name for name, _ in headers if name.lower() in (b"content-length", b"transfer-encoding")]
        if len(framing) > 1:
            raise ValueError("a request must carry exactly one framing header")
        sent = self._default_headers + headers
        if body is not None and not framing:
            sent.append((b"transfer-encoding", b"chunked"))
        try:
            request = h11.Request(method=method, target=target, headers=sent)
        except h11.LocalProtocolError as exc:  # a header or target HTTP/1.1 cannot carry
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        return _Exchange(self, request, body)

    async def _acquire(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without suspending (no timer task per request)
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_seconds)
        except TimeoutError as exc:
            raise UpstreamError(f"all connections to the upstream stayed busy for {self.wait_seconds:g} s") from exc

    def _checkout(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recent: the least likely to have timed out
            if connection.alive() and now - connection.idle_since < self.idle_seconds:
                return connection
            connection.close()
        return None

    async def _open(self) -> _Connection:
        try:
            reader, writer = await self._connect()
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from exc
        return _Connection(reader, writer)

    def _release(self, connection: _Connection, response: Http1Response | None) -> None:
        clean = response is not None and response.recycle()
        if clean and not self._closed and len(self._idle) < self.max_idle and connection.alive():
            connection.idle_since = now = time.monotonic()
            while self._idle and now - self._idle[0].idle_since >= self.idle_seconds:
                self._idle.pop(0).close()
            self._idle.append(connection)
        else:
            connection.close()


class _Exchange:
    """One request on a pooled connection, as an async context manager."""

    __slots__ = ("_body", "_connection", "_pool", "_request", "_response")

    def __init__(self, pool: Http1Pool, request: h11.Request, body: AsyncIterator[bytes] | None) -> None:
        self._pool = pool
        self._request = request
        self._body = body
        self._connection: _Connection | None = None
        self._response: Http1Response | None = None

    async def __aenter__(self) -> Http1Response:
        pool = self._pool
        await pool._acquire()
        try:
            reused = pool._checkout()
            connection = reused or await pool._open()
            self._connection = connection
            try:
                self._response = await self._send(connection)
            except UpstreamError:
                connection.close()
                self._connection = None
                retry = self._body is None and self._request.method in _IDEMPOTENT
                if reused is None or connection.received or not retry:
                    raise
                # The upstream closed the idle connection as we sent on it (its keep-alive
                # timeout): nothing was answered, so once more on a fresh connection.
                self._connection = connection = await pool._open()
                self._response = await self._send(connection)
            return self._response
        except BaseException:
            if self._connection is not None:
                self._connection.close()
            pool._slots.release()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._connection is not None
        self._pool._release(self._connection, self._response if kind is None else None)
        self._pool._slots.release()

    async def _send(self, connection: _Connection) -> Http1Response:
        connection.received = False
        connection.write(self._request)
        failed: UpstreamError | None = None
        if self._body is not None:
            async for chunk in self._body:
                connection.write(h11.Data(data=chunk))
                try:
                    await connection.drain()
                except UpstreamError as exc:
                    # An upstream may answer (413, 401) and close before reading the whole
                    # body: that answer is the one to relay, if it came.
                    failed = exc
                    break
        if failed is None:
            connection.write(h11.EndOfMessage())
        while True:
            try:
                event = await connection.receive()
            except UpstreamError:
                if failed is not None:
                    raise failed from None
                raise
            if type(event) is h11.Response:
                return Http1Response(connection, event, self._request.method)
            if type(event) is not h11.InformationalResponse:  # 100 Continue and the like: skipped
                raise failed or UpstreamError("the upstream closed the connection without answering")
