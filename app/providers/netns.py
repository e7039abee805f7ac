"""Connecting inside another network namespace (a sandbox without a network), as root.

A short-lived thread joins the namespace (``setns``; Python 3.11 has no
``os.setns``), opens the socket there and ends, so no pooled thread ever
changes namespace; the socket keeps its namespace, and the event loop gets it
connected. Used by providers whose network-less sandboxes run on this host.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import socket
import threading
from collections.abc import Awaitable, Callable

from app.errors import PreviewUpstreamUnreachable
from app.providers.ports import PortEndpoint

CLONE_NEWNET = 0x40000000
_CONNECT_TIMEOUT = 5.0


@functools.cache
def _libc() -> ctypes.CDLL:
    # The C library this process already has loaded: ``find_library`` would run ldconfig
    # (~4 ms) for every connection.
    return ctypes.CDLL(None, use_errno=True)


def connect_in_namespace(pid: int, port: int) -> socket.socket:
    """A socket connected to ``port`` on the loopback of ``pid``'s network namespace (blocking; own thread)."""
    with open(f"/proc/{pid}/ns/net", "rb") as target:
        if _libc().setns(target.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise PermissionError(error, f"setns into the sandbox's network: {os.strerror(error)}")
    return connect_loopback(port)


def connect_loopback(port: int) -> socket.socket:
    """A non-blocking socket connected to ``port`` on this namespace's loopback, IPv4 then IPv6 (blocking)."""
    last: OSError | None = None
    for host in ("127.0.0.1", "::1"):
        try:
            sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT)
        except OSError as exc:
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body are separate writes
        sock.setblocking(False)
        return sock
    assert last is not None
    raise last


async def open_in_namespace(pid: int, port: int) -> socket.socket:
    """Run ``connect_in_namespace`` in a thread of its own that ends after: no pooled thread ever changes namespace."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[socket.socket] = loop.create_future()

    def settle(sock: socket.socket | None, error: BaseException | None) -> None:
        if future.done():  # the caller went away: do not leak the connection
            if sock is not None:
                sock.close()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(sock)  # type: ignore[arg-type]

    def run() -> None:
        try:
            sock = connect_in_namespace(pid, port)
        except BaseException as exc:  # handed to the waiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
            return
        loop.call_soon_threadsafe(settle, sock, None)

    threading.Thread(target=run, name="preview-netns", daemon=True).start()
    return await future


def namespace_endpoint(find_pid: Callable[[], Awaitable[int]], port: int) -> PortEndpoint:
    """An endpoint whose connections open in the network namespace of the process ``find_pid`` names."""

    async def opener() -> socket.socket:
        pid = await find_pid()
        try:
            return await open_in_namespace(pid, port)
        except OSError as exc:
            raise PreviewUpstreamUnreachable(f"cannot connect to port {port} in the sandbox: {exc}") from exc

    return PortEndpoint(url=f"http://127.0.0.1:{port}", opener=opener, cache_seconds=60.0)


def guarded_loopback_endpoint(port: int, serves: Callable[[], bool]) -> PortEndpoint:
    """A host-network sandbox's ``port`` on this host's loopback, connected only while ``serves()``.

    The port is the host's: without the check a preview of port 8080 would reach
    whatever listens there (this service, a database) once the sandbox stopped
    listening. ``serves`` (blocking: it reads ``/proc``) says whether the sandbox's
    own process holds the listening socket; it and the connect run in a thread.
    """

    def connect() -> socket.socket:
        if not serves():
            raise PreviewUpstreamUnreachable(f"nothing in the sandbox listens on port {port}")
        try:
            return connect_loopback(port)
        except OSError as exc:
            raise PreviewUpstreamUnreachable(f"cannot connect to port {port} in the sandbox: {exc}") from exc

    async def opener() -> socket.socket:
        return await asyncio.to_thread(connect)

    return PortEndpoint(url=f"http://127.0.0.1:{port}", opener=opener)
