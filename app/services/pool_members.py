"""Warm pool members: created, watched until booted, kept at target, evicted when old.

A member is an ordinary sandbox made through :class:`SandboxService` with the
label ``sandbox-control.pool=<name>`` and the runtime as its entry command, in
warm mode: ``SESSION_CONFIG_FILE`` set and no ``SESSION_CONFIG``, so it clones,
runs setup.sh and then waits for a claim file. Its record moves:

``creating`` → ``running`` (booting: the provider runs it, the runtime is still
cloning) → ``warm`` (the runtime's claim-waiting marker exists: *ready*) →
``running`` with a session (claimed), or ``deleting`` → ``deleted`` (evicted,
drained, broken).

Every move out of ``warm`` or booting is a conditional update
(:meth:`app.storage.state.sandboxes.SandboxStore.transition`), so eviction never deletes a sandbox a
claim has just taken. Members are found by label in the state store, so a
restarted service (or another replica) picks them up where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

from app.errors import SandboxControlError, SandboxNotFound, SandboxNotRunning
from app.locks import KeyedLocks
from app.logging import get_logger
from app.providers.base import Provider, Resources
from app.schemas.common import RESERVED_LABEL_PREFIX
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.background import Periodic
from app.services.leases import LeaseKeeper
from app.services.sandboxes import SandboxService, describe_error, new_sandbox_id
from app.services.sessions import SessionService
from app.settings import Settings
from app.storage.state.pools import PoolRecord, PoolStore
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.times import utcnow
from sandbox_runtime import contract as c

POOL_LABEL = RESERVED_LABEL_PREFIX + "pool"
READY_MARKER = f"{c.DEFAULT_RUN_DIR}/{c.CLAIM_WAITING_FILE}"
_SUPERVISOR_PID = f"{c.DEFAULT_RUN_DIR}/supervisor.pid"
#: A member whose runtime is not running after this long never will: replace it.
_DEAD_AFTER_SECONDS = 30.0
#: The runtime waits this much longer than the pool's max age, so eviction (not a
#: runtime exit) is what ends an unclaimed member.
_WAIT_MARGIN_SECONDS = 600
_PROBE = (
    f'if [ -e "{READY_MARKER}" ]; then echo ready; '
    f'elif [ -e "{_SUPERVISOR_PID}" ]; then echo booting; else echo absent; fi'
)

log = get_logger("pools")


async def abandon_claim(
    members: SandboxStore, sandboxes: SandboxService, pool: str, member_id: str, exc: BaseException
) -> None:
    """A claim whose hand-over failed: record it and delete the member (never hand out a half-claimed one)."""
    log.warning("pool.handover_failed", pool=pool, sandbox_id=member_id, error=describe_error(exc))
    await members.add_event(member_id, "claim_failed", error=describe_error(exc))
    try:
        await asyncio.shield(sandboxes.delete(member_id))
    except SandboxControlError as cleanup:  # the reconciler and the pass retry
        log.warning("pool.handover_cleanup_failed", sandbox_id=member_id, error=str(cleanup))


class PoolMaintainer:
    """Keeps every pool at its target; one per app instance, started in the lifespan."""

    def __init__(
        self,
        settings: Settings,
        pools: PoolStore,
        members: SandboxStore,
        sandboxes: SandboxService,
        sessions: SessionService,
        provider: Provider,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.member_records = members
        self.sandboxes = sandboxes
        self.sessions = sessions
        self.provider = provider
        self._creating = asyncio.Semaphore(settings.pool_create_concurrency)
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # One replica maintains the pools at a time (the lease "job:pools"); claims go anywhere.
        self._loop = Periodic("pools", settings.pool_interval_seconds, self.maintain, leases=leases)
        self._pass_lock = asyncio.Lock()
        #: One filler per pool at a time in this replica (a pass, or a warm-up asking for a member).
        self._pool_locks: KeyedLocks[str] = KeyedLocks()

    def start(self) -> None:
        """Start the loop; the first pass runs at once (a restarted service refills immediately)."""
        self._loop.wake()
        self._loop.start()

    def wake(self) -> None:
        """Run a pass now (after a PUT, a claim, a drain)."""
        self._loop.wake()

    async def aclose(self) -> None:
        await self._loop.aclose()
        watchers = list(self._watchers.values())
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._watchers.clear()

    # -- members -------------------------------------------------------------

    async def members(self, pool_name: str) -> list[SandboxRecord]:
        """The pool's live members (every status but deleted), oldest first."""
        return await self.member_records.list({POOL_LABEL: pool_name})

    async def ensure_member(self, pool: PoolRecord) -> SandboxRecord:
        """An unclaimed member of ``pool`` (ready first, then booting), created if there is none.

        Serialised with the maintenance of that pool (not of the others), so the two never
        both fill the same gap in this replica (another replica's pass may; its excess is
        evicted by the next pass).
        """
        async with self._pool_locks.hold(pool.name):
            unclaimed = [m for m in await self.members(pool.name) if not m.claimed]
            for wanted in ("warm", "running", "creating"):
                for member in unclaimed:
                    if member.status == wanted:
                        return member
            return await self.create_member(pool)

    async def create_member(self, pool: PoolRecord) -> SandboxRecord:
        """Create one member and start watching it boot; returns once the provider runs it."""
        if pool.plain:
            return await self._create_plain_member(pool)
        async with self._creating:
            sandbox_id = new_sandbox_id()
            # A repo image pool's members boot from it (fetch and reset; setup.sh ran in the build).
            repo_image = (
                await self.sessions.repo_images.get(pool.repo_image_id) if pool.repo_image_id is not None else None
            )
            env = await self.sessions.runtime_env(
                sandbox_id=sandbox_id,
                repo_owner=pool.repo_owner,
                repo_name=pool.repo_name,
                boot_mode=c.BootMode.REPO_IMAGE if repo_image is not None else c.BootMode.FRESH,
                repo_image_sha=repo_image.base_sha if repo_image is not None else None,
                branch=pool.branch,
                session_config_file=c.DEFAULT_CLAIM_FILE,
                runtime_overrides={c.WAIT_FOR_SESSION_TIMEOUT: str(pool.max_age_seconds + _WAIT_MARGIN_SECONDS)},
            )
            request = CreateSandboxRequest(
                sandbox_id=sandbox_id, image=pool.image, command=self.provider.runtime_command()
            )
            fields: dict[str, Any] = {
                "service_labels": {POOL_LABEL: pool.name},
                "repo_owner": pool.repo_owner,
                "repo_name": pool.repo_name,
            }
            if repo_image is not None:
                record = await self.sessions.repo_images.create_sandbox(repo_image, request, extra_env=env, **fields)
            else:
                record = await self.sandboxes.create(request, extra_env=env, **fields)
        await self.member_records.add_event(record.id, "pool_member_created", pool=pool.name)
        self.watch(record)
        return record

    async def _create_plain_member(self, pool: PoolRecord) -> SandboxRecord:
        """A plain member is ready as soon as the provider runs it: nothing boots inside."""
        async with self._creating:
            request = CreateSandboxRequest(
                sandbox_id=new_sandbox_id(),
                image=pool.image,
                env=pool.env,
                labels=pool.labels,
                resources=Resources(**pool.resources),
                network=pool.network,
            )
            record = await self.sandboxes.create(request, service_labels={POOL_LABEL: pool.name})
        await self.member_records.add_event(record.id, "pool_member_created", pool=pool.name)
        await self._ready(record, 0.0)
        return record

    async def _ready(self, record: SandboxRecord, seconds: float) -> None:
        if await self.member_records.transition(record.id, ["running"], "warm"):
            await self.member_records.add_event(record.id, "pool_member_ready", seconds=round(seconds, 3))
            log.info("pool.member_ready", sandbox_id=record.id)

    def watch(self, record: SandboxRecord) -> None:
        """Poll a booting member until its runtime waits for a claim (then it is ``warm``)."""
        if record.id in self._watchers or record.provider_object_id is None:
            return
        key = record.id
        task = asyncio.create_task(self._watch(record), name=f"pool-watch:{key}")
        self._watchers[key] = task

        def forget(_task: asyncio.Task[None]) -> None:
            if self._watchers.get(key) is _task:
                del self._watchers[key]

        task.add_done_callback(forget)

    async def _watch(self, record: SandboxRecord) -> None:
        ref = record.provider_object_id
        assert ref is not None
        started = time.monotonic()
        delay = 0.1
        while time.monotonic() - started < self.settings.pool_boot_timeout_seconds:
            try:
                result = await self.provider.exec(ref, ["/bin/sh", "-c", _PROBE], timeout=30)
            except (SandboxNotFound, SandboxNotRunning):
                await self.retire(record.id, "member stopped while booting")
                return
            except SandboxControlError as exc:  # transient: the next probe retries
                log.warning("pool.probe_failed", sandbox_id=record.id, error=str(exc))
                result = None
            state = result.stdout.decode(errors="replace").strip() if result and result.exit_code == 0 else ""
            if state == "ready":
                await self._ready(record, time.monotonic() - started)
                return
            if state == "absent" and time.monotonic() - started > _DEAD_AFTER_SECONDS:
                await self.retire(record.id, "the runtime is not running")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        await self.retire(record.id, f"not booted within {self.settings.pool_boot_timeout_seconds:.0f}s")

    async def retire(
        self, sandbox_id: str, reason: str, *, from_statuses: tuple[str, ...] = ("warm", "running")
    ) -> bool:
        """Delete an unclaimed member; False when a claim took it first (then it is not ours to delete)."""
        if not await self.member_records.transition(sandbox_id, list(from_statuses), "deleting", error=reason):
            return False
        log.info("pool.member_retired", sandbox_id=sandbox_id, reason=reason)
        try:
            await asyncio.shield(self.sandboxes.delete(sandbox_id))
        except SandboxControlError as exc:  # left "deleting": the next pass retries
            log.warning("pool.member_delete_failed", sandbox_id=sandbox_id, error=str(exc))
        return True

    # -- the maintenance pass -------------------------------------------------

    async def maintain(self) -> dict[str, int]:
        """One pass over every pool: clean up, evict, adopt, refill. Returns what it did."""
        async with self._pass_lock:
            counts = {"created": 0, "evicted": 0, "cleaned": 0}
            for pool in await self.pools.list():
                try:
                    async with self._pool_locks.hold(pool.name):
                        await self._maintain_pool(pool, counts)
                except SandboxControlError as exc:
                    log.warning("pool.maintain_failed", pool=pool.name, error=str(exc))
            return {k: v for k, v in counts.items() if v}

    async def _maintain_pool(self, pool: PoolRecord, counts: dict[str, int]) -> None:
        oldest_allowed = utcnow() - timedelta(seconds=pool.max_age_seconds)
        live: list[SandboxRecord] = []
        for member in await self.members(pool.name):
            if member.claimed:
                continue  # claimed: a session's sandbox now, not the pool's
            if member.status in ("failed", "stopped", "deleting"):
                with contextlib.suppress(SandboxControlError):
                    await self.retire(member.id, "broken member", from_statuses=("failed", "stopped", "deleting"))
                    counts["cleaned"] += 1
                continue
            if member.status in ("warm", "running") and member.created_at < oldest_allowed:
                if await self.retire(member.id, f"older than max_age_seconds={pool.max_age_seconds}"):
                    counts["evicted"] += 1
                continue
            if member.status == "running" and pool.plain:
                await self._ready(member, 0.0)  # created just before a restart: nothing to wait for
            elif member.status == "running":
                self.watch(member)  # after a restart: find out whether it has booted meanwhile
            live.append(member)
        excess = len(live) - pool.target
        # Shrink from the least useful end: still booting first, then the newest ready ones.
        ranked = sorted(live, key=lambda m: (m.status == "warm", -m.created_at.timestamp()))
        for member in ranked[: max(excess, 0)]:
            if member.status != "creating" and await self.retire(member.id, "above the pool's target"):
                counts["evicted"] += 1
        deficit = pool.target - len(live)
        if deficit > 0:
            results = await asyncio.gather(*(self.create_member(pool) for _ in range(deficit)), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("pool.create_failed", pool=pool.name, error=describe_error(result))
                else:
                    counts["created"] += 1
            if await self.pools.get(pool.name) is None:  # drained while we were creating
                for result in results:
                    if isinstance(result, SandboxRecord):
                        await self.retire(result.id, "pool deleted")
