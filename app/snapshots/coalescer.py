"""Group commit: many concurrent single-key requests answered by one batched call.

A v2 snapshot asks the chunk index about each chunk (is it known? index it) from
many concurrent tasks. One state-store transaction per chunk serialises the whole
pipeline behind the database (SQLite sessions take turns); answering every request
that arrived while the previous batch was in flight with one query costs a handful
of transactions per snapshot instead, without any timer or batch-size tuning: the
slower the store, the larger the batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Keys handed to one batched call at most.
MAX_BATCH = 1000


class Coalescer(Generic[K, V]):
    """``await get(key)`` → ``run(batch)[key]`` (``None`` when absent), one ``run`` at a time.

    ``run`` receives distinct keys; a failure of ``run`` is raised by every request
    of that batch. A request whose caller was cancelled before its batch started is
    left out of it.
    """

    def __init__(self, run: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = MAX_BATCH) -> None:
        self._run = run
        self._max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._running: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        """The answer for ``key`` from the next batch."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        self._start()
        return await future

    async def settle(self) -> None:
        """Wait for the batch in flight, if any (its requests may be gone, its effects are not)."""
        if self._running is not None:
            await asyncio.wait({self._running})

    def _start(self) -> None:
        if self._running is None and self._waiting:
            self._running = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        batch: dict[K, list[asyncio.Future[V | None]]] = {}
        try:
            while self._waiting and len(batch) < self._max_batch:
                key, futures = self._waiting.popitem()
                if any(not future.done() for future in futures):
                    batch[key] = futures
            if not batch:
                return
            try:
                answers = await self._run(list(batch))
            except Exception as exc:
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                return
            for key, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(answers.get(key))
        except BaseException:  # cancelled (loop shutdown): so are the requests it held
            self._running = None
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        finally:
            if self._running is asyncio.current_task():
                self._running = None
                self._start()  # what arrived meanwhile is the next batch
