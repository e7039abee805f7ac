"""Small helpers for async byte streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def aclose_stream(stream: AsyncIterator[Any]) -> None:
    """Close an async iterator that may be a generator, ending what feeds it."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
