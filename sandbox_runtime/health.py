"""Health probes of the env server on loopback: cheap, and overlapping while it boots.

Two facts about OpenCode shape this module:

* it accepts connections shortly before it can answer them, and a request accepted
  in that window is never answered. A poller that waits for each answer in turn
  therefore loses up to one request timeout at the very moment the server becomes
  ready. :func:`wait_until_healthy` instead starts new probes whether or not earlier
  ones have answered (every 10 ms once one hangs), and the first 200 wins;
* it boots on about one core, and the runtime's processes compete with it for the
  few cores a sandbox has. A probe here is a raw HTTP/1.1 request on an asyncio
  socket (about 0.1 ms of CPU, against about 1 ms through httpx), probes back off
  while nothing listens yet, and importing this module costs nothing beyond asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

HealthCheck = Callable[[float], Awaitable[bool]]
"""Probes once with a timeout in seconds; True when the server answered healthy."""

_FIRST_INTERVAL = 0.002
_LISTENING_INTERVAL = 0.01
_PROBE_TIMEOUT = 1.0
_MAX_IN_FLIGHT = 32
_MAX_BODY = 4 << 20


class LoopbackRequest:
    """One HTTP/1.1 request to a plain-http URL on loopback, without an HTTP library.

    Calling it is a health probe: healthy means status 200. :meth:`fetch` also reads the
    answer's body (for the few JSON calls the supervisor makes to the env server).
    """

    def __init__(
        self, url: str, method: str = "GET", *, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ) -> None:
        """Raises:
        ValueError: ``url`` is not an ``http://host[:port]/path`` URL.
        """
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"loopback requests need a plain http URL, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append("Content-Type: application/json")
        if body is not None or method != "GET":
            lines.append(f"Content-Length: {len(body or b'')}")
        lines.append("Connection: close")
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")

    async def status(self, timeout: float) -> int | None:
        """The answer's status code; None on refusal, timeout or a malformed answer (never raises OSError)."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(self._request)
                status_line = await reader.readline()
        except (OSError, TimeoutError, ValueError):
            return None
        finally:
            if writer is not None:
                writer.close()
        return _status_of(status_line)

    async def fetch(self, timeout: float, limit: int = _MAX_BODY) -> tuple[int, bytes] | None:
        """(status, body) of the answer; None on refusal, timeout, a malformed or an oversized answer."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=limit)
                writer.write(self._request)
                status = _status_of(await reader.readline())
                body = await _read_body(reader, await _read_headers(reader), limit)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        finally:
            if writer is not None:
                writer.close()
        return None if status is None or body is None else (status, body)

    async def __call__(self, timeout: float) -> bool:
        """One health probe: True when the answer is 200 within ``timeout`` seconds."""
        return await self.status(timeout) == 200


def _status_of(status_line: bytes) -> int | None:
    fields = status_line.split(None, 2)
    return int(fields[1]) if len(fields) >= 2 and fields[1].isdigit() else None


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """Header lines up to the empty one, names lower-cased."""
    headers: dict[str, str] = {}
    while line := (await reader.readline()).rstrip(b"\r\n"):
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str], limit: int) -> bytes | None:
    """The body per ``Transfer-Encoding: chunked``, ``Content-Length`` or the connection's end."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        size = 0
        while True:
            length = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if length == 0:
                return b"".join(chunks)
            size += length
            if size > limit:
                return None
            chunks.append(await reader.readexactly(length))
            await reader.readline()
    if "content-length" in headers:
        length = int(headers["content-length"])
        return await reader.readexactly(length) if length <= limit else None
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def wait_until_healthy(
    check: HealthCheck, *, timeout: float, alive: Callable[[], bool] = lambda: True, max_interval: float = 0.1
) -> bool:
    """Probe until one answers healthy (True), ``timeout`` passes or ``alive()`` turns False.

    Probes overlap (see the module docstring); each gets 1 s to answer. While they are
    refused at once (nothing listens yet: most of a boot) the next one starts 2 ms later,
    backing off to ``max_interval``; while one is left unanswered (the server listens,
    so it is about to be ready) they start every 10 ms, and past 32 unanswered ones the
    oldest is given up for the new one (an early request is never answered anyway).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interval = _FIRST_INTERVAL
    healthy: asyncio.Future[bool] = loop.create_future()
    in_flight: dict[asyncio.Future[bool], None] = {}  # oldest first

    def settle(done: asyncio.Future[bool]) -> None:
        in_flight.pop(done, None)
        if not done.cancelled() and done.exception() is None and done.result() and not healthy.done():
            healthy.set_result(True)

    try:
        while not healthy.done() and alive() and loop.time() < deadline:
            if len(in_flight) >= _MAX_IN_FLIGHT:
                next(iter(in_flight)).cancel()
            probe = asyncio.ensure_future(check(_PROBE_TIMEOUT))
            in_flight[probe] = None
            probe.add_done_callback(settle)
            # One wait per probe, cut short only by success: this loop runs next to a
            # booting env server and should leave it every cycle it can.
            await asyncio.wait((healthy,), timeout=max(0.0, min(interval, deadline - loop.time())))
            interval = _LISTENING_INTERVAL if in_flight else min(interval * 1.5, max_interval)
        return healthy.done()
    finally:
        pending = list(in_flight)
        for unanswered in pending:
            unanswered.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
