"""Connections from the proxy to sandbox ports: one keep-alive pool per previewed port.

The address comes from ``Provider.port_endpoint`` alone (cached for the
endpoint's ``cache_seconds``); nothing in a proxied request can change where
it goes. HTTP runs on an ``httpcore`` pool, so a preview's requests reuse warm
connections; WebSockets get a ``websockets`` client connection each. An
endpoint with an ``opener`` (a sandbox in its own network namespace) connects
through it instead of a TCP connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import httpcore
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake
from websockets.typing import Subprotocol

from app.errors import PreviewUpstreamUnreachable
from app.providers.base import Provider
from app.providers.ports import PortEndpoint, SocketOpener

Headers = list[tuple[bytes, bytes]]
#: Seconds to connect to a sandbox port (a listening server answers at once).
CONNECT_TIMEOUT = 10.0
#: Largest WebSocket message relayed (either way).
MAX_MESSAGE_BYTES = 16 << 20
_POOL_LIMIT = 256
#: Bytes read from a sandbox port at once, and buffered from it before the socket is paused.
READ_BYTES = 256 * 1024


class _SocketStream(httpcore.AsyncNetworkStream):
    """An httpcore stream over asyncio streams of an already connected socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpcore asks for 64 KiB at a time; a bulk body reads in fewer, larger pieces
        # (h11 takes any amount).
        return await asyncio.wait_for(self._reader.read(max(max_bytes, READ_BYTES)), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._writer.write(buffer)
        await asyncio.wait_for(self._writer.drain(), timeout)

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no TLS to a sandbox port reached through its own network")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of every pooled connection on every request: answered from what the loop
            # already saw (the peer closed it) instead of a poll() system call per connection.
            return self._reader.at_eof() or self._writer.is_closing()
        return self._writer.get_extra_info(info)


class _StreamBackend(httpcore.AsyncNetworkBackend):
    """Plain-HTTP connections on asyncio streams: through the endpoint's opener, else a TCP connect."""

    def __init__(self, opener: SocketOpener | None) -> None:
        self._opener = opener

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._opener is not None:
            sock = await asyncio.wait_for(self._opener(), timeout)
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_BYTES)
        else:
            connecting = asyncio.open_connection(host, port, limit=READ_BYTES)
            reader, writer = await asyncio.wait_for(connecting, timeout)
            # Headers and body are separate writes: no delayed-ACK stall between them.
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SocketStream(reader, writer)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not sandbox ports")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Upstreams:
    """Endpoints and connection pools of previewed ports, by (provider ref, port)."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        if importlib.util.find_spec("sniffio") is None:
            # httpcore tries ``import sniffio`` for every lock it makes; without the package each
            # failed import rescans sys.path (~0.3 ms a request). A None entry fails it at once.
            sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
        self._endpoints: dict[tuple[str, int], tuple[float, PortEndpoint]] = {}
        self._pools: dict[tuple[str, int, str], httpcore.AsyncConnectionPool] = {}

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.aclose() for pool in pools), return_exceptions=True)

    async def endpoint(self, ref: str, port: int) -> PortEndpoint:
        now = time.monotonic()
        cached = self._endpoints.get((ref, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        endpoint = await self.provider.port_endpoint(ref, port)
        if len(self._endpoints) >= _POOL_LIMIT:
            self._endpoints.pop(next(iter(self._endpoints)))
        self._endpoints[(ref, port)] = (now + endpoint.cache_seconds, endpoint)
        return endpoint

    def _pool(self, ref: str, port: int, endpoint: PortEndpoint) -> httpcore.AsyncConnectionPool:
        key = (ref, port, endpoint.url)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= _POOL_LIMIT:
                oldest = self._pools.pop(next(iter(self._pools)))
                asyncio.get_running_loop().create_task(oldest.aclose())
            # TLS (a provider's own preview link) needs httpcore's backend; plain HTTP gets ours.
            plain = endpoint.opener is not None or endpoint.url.startswith("http://")
            backend = _StreamBackend(endpoint.opener) if plain else None
            pool = httpcore.AsyncConnectionPool(
                max_connections=64, keepalive_expiry=30.0, network_backend=backend, retries=0
            )
            self._pools[key] = pool
        return pool

    @contextlib.asynccontextmanager
    async def request(
        self, ref: str, port: int, method: str, target: str, headers: Headers, body: AsyncIterator[bytes] | None
    ) -> AsyncIterator[httpcore.Response]:
        """Send one request to the port; yields the response with its body unread (stream it)."""
        endpoint = await self.endpoint(ref, port)
        url = endpoint.url.rstrip("/") + target
        host = endpoint.url.split("://", 1)[1].encode()
        sent = [(b"host", host), *headers, *((k.encode(), v.encode()) for k, v in endpoint.headers.items())]
        pool = self._pool(ref, port, endpoint)
        # No read timeout: an SSE stream or a long poll may be quiet for as long as it likes.
        timeouts = {"connect": CONNECT_TIMEOUT, "read": None, "write": None, "pool": 30.0}
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    pool.stream(method.encode(), url, headers=sent, content=body, extensions={"timeout": timeouts})
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                self._endpoints.pop((ref, port), None)  # ask the provider again next time
                raise PreviewUpstreamUnreachable(f"nothing answers on port {port} of the sandbox: {exc}") from exc
            except (httpcore.ProtocolError, httpcore.NetworkError) as exc:
                raise PreviewUpstreamUnreachable(f"the server on port {port} broke the exchange: {exc}") from exc
            yield response

    async def open_websocket(
        self, ref: str, port: int, target: str, headers: Headers, subprotocols: Sequence[str], origin: str | None
    ) -> ClientConnection:
        """Open a WebSocket to the port; ``PreviewUpstreamUnreachable`` if it cannot be opened."""
        endpoint = await self.endpoint(ref, port)
        scheme, rest = endpoint.url.split("://", 1)
        uri = ("wss://" if scheme == "https" else "ws://") + rest.rstrip("/") + target
        extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers] + list(endpoint.headers.items())
        try:
            sock = await asyncio.wait_for(endpoint.opener(), CONNECT_TIMEOUT) if endpoint.opener else None
            return await connect(
                uri,
                sock=sock,
                additional_headers=extra,
                subprotocols=[Subprotocol(p) for p in subprotocols] or None,
                origin=origin,  # type: ignore[arg-type]
                compression=None,
                proxy=None,
                user_agent_header=None,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=None,
                max_size=MAX_MESSAGE_BYTES,
            )
        except (OSError, TimeoutError, ValueError, InvalidHandshake) as exc:
            self._endpoints.pop((ref, port), None)
            raise PreviewUpstreamUnreachable(f"no WebSocket on port {port} of the sandbox: {exc}") from exc
