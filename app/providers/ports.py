"""How the service reaches a port inside a sandbox (``Provider.port_endpoint``), for preview URLs.

A provider answers with one ``PortEndpoint``: a URL the service speaks HTTP and
WebSocket to, plus, when a plain TCP connection to that URL's host cannot reach
the sandbox (its own network namespace), an ``opener`` that makes the connection
another way. The address comes only from the provider, never from a request.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

#: Opens a connected, non-blocking TCP socket to the sandbox port.
SocketOpener = Callable[[], Awaitable[socket.socket]]


@dataclass(frozen=True)
class PortEndpoint:
    """Where the service sends a preview's requests."""

    #: ``http://10.0.0.5:3000``, ``http://127.0.0.1:3000`` or a provider's own preview link
    #: (``https://3000-abc.proxy.daytona.works``); no path, no query.
    url: str
    #: Headers every request to ``url`` needs (a provider's preview token), added by the proxy.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Connects instead of a TCP connect to ``url``'s host (e.g. inside a network namespace);
    #: ``url`` still gives the scheme and the ``Host`` header.
    opener: SocketOpener | None = None
    #: How long the answer stays true (a container's address until it restarts); the
    #: proxy asks again after this many seconds.
    cache_seconds: float = 10.0


def loopback_endpoint(port: int) -> PortEndpoint:
    """A sandbox sharing the service's network: its port is on 127.0.0.1."""
    return PortEndpoint(url=f"http://127.0.0.1:{port}")
