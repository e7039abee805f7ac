"""This replica's identity, its heartbeat, and the leases it holds on background work.

Every background job runs under a lease in the state store, so replicas never
do one job twice and a dead replica's work is taken over:

* singleton jobs (reconciliation, TTL reaping, pool maintenance, snapshot
  clean-up) hold ``job:<name>`` while this replica is their runner; each run
  first makes sure the lease is (still) ours;
* a build holds ``build:<id>`` while it runs here (``run_leased``).

One loop renews every held lease at a third of its lifetime and beats the
replica's heartbeat. A lease that cannot be renewed is lost: the work bound
to it is cancelled, because another replica may take it over from then on.
``aclose`` (graceful shutdown) hands every lease back at once, so others
take over without waiting for expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from app.logging import get_logger
from app.storage.state.leases import LeaseRecord, LeaseStore, ReplicaRecord, ReplicaStore
from app.storage.state.times import utcnow

log = get_logger("leases")


def new_replica_id() -> str:
    """``<host>-<pid>-<random>``: readable in logs, unique across restarts."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaseKeeper:
    """Acquires, renews and releases this replica's leases; beats its heartbeat."""

    def __init__(self, replica_id: str, leases: LeaseStore, replicas: ReplicaStore, *, ttl: float) -> None:
        self.replica_id = replica_id
        self.ttl = ttl
        self._leases = leases
        self._replicas = replicas
        self._held: set[str] = set()
        #: Work bound to a lease: cancelled when the lease is lost.
        self._bound: dict[str, set[asyncio.Task[Any]]] = {}
        self._started_at = utcnow()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Register this replica and start the renewal loop."""
        await self._beat()
        self._task = asyncio.create_task(self._run(), name="leases:renew")

    async def aclose(self) -> None:
        """Stop renewing, hand every lease back, and say goodbye (graceful shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        held, self._held = set(self._held), set()
        try:
            released = await asyncio.shield(self._leases.release(held, self.replica_id))
            await asyncio.shield(self._replicas.remove(self.replica_id))
            if released:
                log.info("lease.released_all", count=released)
        except Exception as exc:  # they run out on their own
            log.warning("lease.release_failed", error=str(exc), error_type=type(exc).__name__)

    # -- leases --------------------------------------------------------------

    def holds(self, name: str) -> bool:
        return name in self._held

    @property
    def held(self) -> frozenset[str]:
        """The leases this replica holds now."""
        return frozenset(self._held)

    async def acquire(self, name: str) -> bool:
        """Take (or keep) ``name``; False while another live replica holds it."""
        try:
            won = await self._leases.acquire(name, self.replica_id, self.ttl)
        except Exception as exc:  # the store is down: we hold nothing we cannot prove
            log.warning("lease.acquire_failed", lease=name, error=str(exc), error_type=type(exc).__name__)
            won = False
        if won and name not in self._held:
            log.info("lease.acquired", lease=name)
        if won:
            self._held.add(name)
        else:
            self._lost({name})
        return won

    async def release(self, name: str) -> None:
        """Hand ``name`` back now (the work is done)."""
        self._held.discard(name)
        try:
            await asyncio.shield(self._leases.release({name}, self.replica_id))
        except Exception as exc:
            log.warning("lease.release_failed", lease=name, error=str(exc))

    async def run_leased(self, name: str, work: Callable[[], Awaitable[Any]], *, release: bool = True) -> bool:
        """Run ``work`` while holding ``name``; False (nothing run) when another replica holds it.

        The work is cancelled if the lease is lost while it runs (another
        replica may take the work over from then on); that ends this call
        normally. With ``release`` the lease is handed back when the work
        ends, else it is kept (a periodic job stays with its runner).
        """
        if not await self.acquire(name):
            return False
        task = asyncio.ensure_future(work())
        self._bound.setdefault(name, set()).add(task)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves
            log.warning("lease.work_stopped", lease=name, reason="lease lost")
        finally:
            bound = self._bound.get(name)
            if bound is not None:
                bound.discard(task)
                if not bound:
                    del self._bound[name]
            if release and name in self._held:
                await self.release(name)
        return True

    async def leases(self) -> list[LeaseRecord]:
        """Every live lease of every replica."""
        return await self._leases.list()

    async def replicas(self) -> list[ReplicaRecord]:
        """Replicas whose heartbeat is recent."""
        return await self._replicas.live(within=self.ttl)  # three heartbeats missed: gone

    async def live_replica_ids(self) -> set[str]:
        return {r.id for r in await self.replicas()}

    # -- renewal -------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._beat()
                if self._held:
                    kept = await self._leases.renew(set(self._held), self.replica_id, self.ttl)
                    self._lost(self._held - kept)
            except Exception as exc:  # transient; leases last three renewal periods
                log.warning("lease.renew_failed", error=str(exc), error_type=type(exc).__name__)

    async def _beat(self) -> None:
        await self._replicas.heartbeat(
            self.replica_id, host=socket.gethostname()[:256], pid=os.getpid(), started_at=self._started_at
        )

    def _lost(self, names: set[str]) -> None:
        for name in names & self._held:
            self._held.discard(name)
            log.warning("lease.lost", lease=name)
            for task in self._bound.get(name, set()):
                task.cancel()
