"""Per-key asyncio locks whose map forgets a key once nobody holds or waits for it.

A ``dict[str, asyncio.Lock]`` filled with ``setdefault`` grows by one entry per
sandbox (or image) ever touched; over months of uptime that is a leak. Here
each key carries a count of the tasks holding or waiting for its lock, and
the entry goes when the count drops to zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedLocks(Generic[K]):
    """``async with locks.hold(key):`` serialises the holders of one key; keys are independent."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block (waiting for the current holder first)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def busy(self, key: K) -> bool:
        """True while some task holds or waits for ``key`` (e.g. a create in progress here)."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
