"""Periodic background duties (TTL reaping, reconciliation, pool maintenance) with clean shutdown.

With a :class:`~app.services.leases.LeaseKeeper` a duty runs on one replica
at a time: each run first takes (or keeps) the lease ``job:<name>``; the
replicas that do not hold it skip the run. The holder keeps the lease between
runs, so a duty stays with one replica until that replica stops or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from app.logging import get_logger
from app.services.leases import LeaseKeeper

log = get_logger("background")


class Periodic:
    """Runs ``job`` every ``interval`` seconds until ``aclose``; a failing run is logged, not fatal.

    ``wake()`` runs it at once (wake-ups coalesce); ``first_run_now`` runs it
    right after ``start`` instead of one interval later.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        job: Callable[[], Awaitable[Any]],
        *,
        leases: LeaseKeeper | None = None,
        first_run_now: bool = False,
    ) -> None:
        self.name = name
        self.interval = interval
        self.job = job
        self.lease_name = f"job:{name}"
        self._leases = leases
        self._wake = asyncio.Event()
        if first_run_now:
            self._wake.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"periodic:{self.name}")

    def wake(self) -> None:
        """Run now (if this replica holds the duty's lease, or can take it)."""
        self._wake.set()

    async def run_once(self) -> Any:
        """One run, under the lease when there is a keeper; None when another replica holds it."""
        if self._leases is None:
            return await self.job()
        result: list[Any] = []

        async def job() -> None:
            result.append(await self.job())

        await self._leases.run_leased(self.lease_name, job, release=False)
        return result[0] if result else None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                result = await self.run_once()
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
