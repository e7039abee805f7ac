"""Connections from the proxy to sandbox ports: one keep-alive pool per previewed port.

The address comes from ``Provider.port_endpoint`` alone (cached for the
endpoint's ``cache_seconds``); nothing in a proxied request can change where
it goes. HTTP runs on a keep-alive pool of our own (``http1``), so a preview's
requests reuse warm connections; WebSockets get a ``websockets`` client
connection each. An endpoint with an ``opener`` (a sandbox in its own network
namespace) connects through it instead of a TCP connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake
from websockets.typing import Subprotocol

from app.errors import PreviewUpstreamUnreachable
from app.providers.base import Provider
from app.providers.ports import PortEndpoint
from app.services.previews.http1 import READ_BYTES, Http1Pool, Http1Response, UpstreamConnectError, UpstreamError

Headers = list[tuple[bytes, bytes]]
#: Seconds to connect to a sandbox port (a listening server answers at once).
CONNECT_TIMEOUT = 10.0
#: Largest WebSocket message relayed (either way).
MAX_MESSAGE_BYTES = 16 << 20
_POOL_LIMIT = 256


class Upstreams:
    """Endpoints and connection pools of previewed ports, by (provider ref, port)."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._endpoints: dict[tuple[str, int], tuple[float, PortEndpoint]] = {}
        self._pools: dict[tuple[str, int, str], Http1Pool] = {}
        self._tls: ssl.SSLContext | None = None

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

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

    def _pool(self, ref: str, port: int, endpoint: PortEndpoint) -> Http1Pool:
        key = (ref, port, endpoint.url)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= _POOL_LIMIT:
                self._pools.pop(next(iter(self._pools))).close()
            host = endpoint.url.split("://", 1)[1].rstrip("/")
            extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in endpoint.headers.items()]
            pool = Http1Pool(lambda: self._connect(endpoint), default_headers=[(b"host", host.encode()), *extra])
            self._pools[key] = pool
        return pool

    async def _connect(self, endpoint: PortEndpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the endpoint: through its opener, else TCP (TLS for a provider's https link)."""
        if endpoint.opener is not None:
            sock = await asyncio.wait_for(endpoint.opener(), CONNECT_TIMEOUT)
            return await asyncio.open_connection(sock=sock, limit=READ_BYTES)
        url = urlsplit(endpoint.url)
        tls = self._tls_context() if url.scheme == "https" else None
        port = url.port or (443 if tls is not None else 80)
        connecting = asyncio.open_connection(url.hostname, port, ssl=tls, limit=READ_BYTES)
        reader, writer = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
        # Headers and body are separate writes: no delayed-ACK stall between them.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            import certifi  # an httpx dependency: the same roots the HTTP client trusted before

            self._tls = ssl.create_default_context(cafile=certifi.where())
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls

    @contextlib.asynccontextmanager
    async def request(
        self, ref: str, port: int, method: str, target: str, headers: Headers, body: AsyncIterator[bytes] | None
    ) -> AsyncIterator[Http1Response]:
        """Send one request to the port; yields the response with its body unread (stream it).

        No read timeout: an SSE stream or a long poll may be quiet for as long as it likes.
        """
        endpoint = await self.endpoint(ref, port)
        pool = self._pool(ref, port, endpoint)
        try:
            exchange = pool.request(method.encode(), target.encode("latin-1"), headers, body)
            response = await exchange.__aenter__()
        except UpstreamConnectError as exc:
            self._endpoints.pop((ref, port), None)  # ask the provider again next time
            raise PreviewUpstreamUnreachable(f"nothing answers on port {port} of the sandbox: {exc}") from exc
        except UpstreamError as exc:
            raise PreviewUpstreamUnreachable(f"the server on port {port} broke the exchange: {exc}") from exc
        try:
            yield response
        except BaseException as exc:
            await exchange.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await exchange.__aexit__(None, None, None)

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
