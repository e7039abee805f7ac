"""Session factory of the state store.

SQLite allows one writer at a time, and a transaction that reads and then
writes fails at once ("database is locked") when another connection wrote in
between; waiting on SQLite's busy timeout instead stalls whole requests under
load. So with SQLite every transaction of this process queues on one asyncio
lock, which costs microseconds per short transaction and never errors.
PostgreSQL sessions run concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class SessionFactory:
    """``async with factory() as s`` (read) and ``async with factory.begin() as s`` (write)."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], *, serialize: bool) -> None:
        self._maker = maker
        self._lock = asyncio.Lock() if serialize else None
        self._owner: asyncio.Task[object] | None = None

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if self._lock is None or (task is not None and self._owner is task):
            yield  # PostgreSQL, or a nested session of the task that holds the turn
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        async with self._turn(), self._maker() as session:
            yield session

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        async with self._turn(), self._maker.begin() as session:
            yield session
