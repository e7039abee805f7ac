"""Periodic background duties (TTL reaping, reconciliation) with clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from app.logging import get_logger

log = get_logger("background")


class Periodic:
    """Runs ``job`` every ``interval`` seconds until ``aclose``; a failing run is logged, not fatal."""

    def __init__(self, name: str, interval: float, job: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self.interval = interval
        self.job = job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"periodic:{self.name}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                result = await self.job()
                if result:
                    log.info("periodic.ran", job=self.name, result=result)
            except Exception as exc:  # keep the loop alive; the next run retries
                log.warning("periodic.failed", job=self.name, error=str(exc), error_type=type(exc).__name__)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
