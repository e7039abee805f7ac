"""Reaching a port of a Daytona sandbox, for preview URLs: Daytona's own preview link.

``get_preview_link`` answers a URL on Daytona's proxy and, for a private
sandbox, a token it wants in ``X-Daytona-Preview-Token``. The service proxies
to that URL and adds the header itself, so callers only ever hold our preview
token (revocable, bound to one port), never Daytona's.
"""

from __future__ import annotations

from typing import Any

from app.providers.daytona.errors import DaytonaCalls
from app.providers.ports import PortEndpoint

__all__ = ["PortEndpoint", "preview_endpoint"]

TOKEN_HEADER = "X-Daytona-Preview-Token"


async def preview_endpoint(calls: DaytonaCalls, sandbox: Any, port: int) -> PortEndpoint:
    """The endpoint of ``port`` of the SDK ``sandbox`` (running)."""
    link = await calls.call("preview_link", lambda: sandbox.get_preview_link(port), ref=sandbox.id)
    headers = {TOKEN_HEADER: str(link.token)} if link.token else {}
    # The link lasts as long as the sandbox runs; ask again now and then all the same.
    return PortEndpoint(url=str(link.url).rstrip("/"), headers=headers, cache_seconds=300.0)
