"""Loopback health probes against a scripted server (asyncio streams on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sandbox_runtime.health import LoopbackRequest, wait_until_healthy
from tests.fixtures.runtime import free_port


class ScriptedServer:
    """Answers with ``status``, except that connections are left unanswered while ``mute`` is set."""

    def __init__(self) -> None:
        self.status = 200
        self.mute = asyncio.Event()
        self.requests: list[bytes] = []
        self.held = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if self.mute.is_set():  # like OpenCode just before it is ready: accepted, never answered
            self.held += 1
            await reader.read()  # until the prober gives up and closes
        else:
            self.requests.append(request)
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedServer, int]]:
    scripted = ScriptedServer()
    port = await scripted.start()
    try:
        yield scripted, port
    finally:
        await scripted.stop()


async def test_a_request_answers_with_its_status(server: tuple[ScriptedServer, int]) -> None:
    scripted, port = server
    assert await LoopbackRequest(f"http://127.0.0.1:{port}/global/health")(1.0) is True
    scripted.status = 503
    assert await LoopbackRequest(f"http://127.0.0.1:{port}/global/health").status(1.0) == 503
    assert await LoopbackRequest(f"http://127.0.0.1:{port}/global/health")(1.0) is False
    assert await LoopbackRequest(f"http://127.0.0.1:{port}/instance/dispose?x=1", "POST").status(1.0) == 503
    assert scripted.requests[-1].startswith(b"POST /instance/dispose?x=1 HTTP/1.1\r\n")
    assert b"Content-Length: 0\r\n" in scripted.requests[-1]


async def test_refused_or_unanswered_is_not_healthy(server: tuple[ScriptedServer, int]) -> None:
    scripted, port = server
    assert await LoopbackRequest(f"http://127.0.0.1:{free_port()}/global/health").status(1.0) is None
    scripted.mute.set()
    assert await LoopbackRequest(f"http://127.0.0.1:{port}/global/health").status(0.2) is None
    with pytest.raises(ValueError):
        LoopbackRequest("https://127.0.0.1/global/health")


async def test_probes_overlap_so_an_unanswered_one_costs_nothing(server: tuple[ScriptedServer, int]) -> None:
    scripted, port = server
    scripted.mute.set()
    probe = LoopbackRequest(f"http://127.0.0.1:{port}/global/health")
    waiting = asyncio.create_task(wait_until_healthy(probe, timeout=30))
    for _ in range(1000):
        if scripted.held >= 40:
            break
        await asyncio.sleep(0.01)
    # New probes start while earlier ones are unanswered, also past the cap on unanswered ones.
    assert scripted.held >= 40
    scripted.mute.clear()
    assert await asyncio.wait_for(waiting, timeout=5) is True  # well before the first probe's own timeout


async def test_waiting_ends_when_the_process_dies_or_time_is_up(server: tuple[ScriptedServer, int]) -> None:
    refused = LoopbackRequest(f"http://127.0.0.1:{free_port()}/global/health")
    assert await asyncio.wait_for(wait_until_healthy(refused, timeout=30, alive=lambda: False), 5) is False
    assert await asyncio.wait_for(wait_until_healthy(refused, timeout=0.1), 5) is False


async def _serve_once(answer: bytes) -> tuple[int, list[bytes], asyncio.Server]:
    """A server that records each request (head and body) and answers ``answer``, then closes."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        seen.append(head + await reader.readexactly(length))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1]), seen, server


async def test_requests_carry_headers_and_bodies_and_answers_are_read_whole() -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    for answer, body in (
        (b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a": 1}', b'{"a": 1}'),
        (chunked, b'{"a": 1}'),
        (b"HTTP/1.1 404 Not Found\r\n\r\nuntil the end", b"until the end"),
    ):
        port, seen, server = await _serve_once(answer)
        async with server:
            request = LoopbackRequest(
                f"http://127.0.0.1:{port}/auth/x", "PUT", headers={"Authorization": "Basic abc"}, body=b'{"k":1}'
            )
            assert await request.fetch(1.0) == (404 if b"404" in answer else 200, body)
        assert seen[0].startswith(b"PUT /auth/x HTTP/1.1\r\n") and b"Authorization: Basic abc\r\n" in seen[0]
        assert b"Content-Type: application/json\r\nContent-Length: 7\r\n" in seen[0] and seen[0].endswith(b'{"k":1}')


async def test_an_oversized_or_broken_answer_is_none() -> None:
    port, _, server = await _serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    async with server:
        assert await LoopbackRequest(f"http://127.0.0.1:{port}/x").fetch(1.0) is None
    port, _, server = await _serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    async with server:
        assert await LoopbackRequest(f"http://127.0.0.1:{port}/x").fetch(1.0, limit=10) is None
    assert await LoopbackRequest(f"http://127.0.0.1:{free_port()}/x").fetch(1.0) is None
