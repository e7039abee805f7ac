"""Background duties over every sandbox: TTL reaping and reconciliation with the provider.

The state store is the service's memory; the provider is the truth about what
runs. After a restart or a crash the reconciler makes the store agree with the
provider: it adopts what a create left behind, marks what vanished, refreshes
statuses, and deletes provider objects that no live record owns.

Replicas share the store and the provider, so the reconciler is careful
about work in flight elsewhere (it runs under a lease, on one replica at a
time, but creates run on every replica):

* a ``creating`` record is left alone while the replica that created it is
  alive (rows written before owners were recorded: while younger than the
  grace period);
* a provider object without a live record is deleted only once it is older
  than the grace period and its record is confirmed absent (or deleted) right
  before the delete.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from app.errors import SandboxControlError, SandboxNotFound
from app.logging import get_logger
from app.providers.base import Provider, ProviderSandbox
from app.services.sandboxes import ID_LABEL, MANAGED_LABEL
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.times import utcnow

log = get_logger("sandboxes")


async def adopt_interrupted(records: SandboxStore, provider: Provider, record: SandboxRecord) -> SandboxRecord:
    """A ``creating`` record whose creator is gone, made the provider's sandbox for it when there is one.

    For work that takes over a dead replica's create at once (a build under its
    lease) instead of waiting for the next reconciliation.
    """
    found = await provider.list({ID_LABEL: record.stable_key})
    if record.status != "creating" or not found:
        return record
    updated = await records.update(record.id, provider_object_id=found[0].provider_object_id, status=found[0].status)
    await records.add_event(record.id, "adopted")
    log.info("sandbox.adopted", sandbox_id=record.id, provider_object_id=found[0].provider_object_id)
    return updated or record


async def _nobody() -> set[str]:
    return set()


class Reconciler:
    """Reaps expired sandboxes and aligns the store with the provider.

    ``busy(sandbox_id)`` says whether this process is creating that sandbox
    right now; ``delete(sandbox_id)`` is the sandbox service's delete;
    ``live_replicas()`` the ids of replicas whose heartbeat is recent.
    """

    def __init__(
        self,
        records: SandboxStore,
        provider: Provider,
        *,
        busy: Callable[[str], bool],
        delete: Callable[[str], Awaitable[Any]],
        live_replicas: Callable[[], Awaitable[set[str]]] = _nobody,
        grace_seconds: float = 60.0,
        adopted_ttl_seconds: int = 3600,
    ) -> None:
        self._records = records
        self._provider = provider
        self._busy = busy
        self._delete = delete
        self._live_replicas = live_replicas
        self._grace = timedelta(seconds=grace_seconds)
        self._adopted_ttl = adopted_ttl_seconds

    async def reap_expired(self) -> int:
        """Delete sandboxes past their TTL; returns how many were reaped."""
        reaped = 0
        for record in await self._records.expired(utcnow()):
            try:
                await self._delete(record.id)
                await self._records.add_event(record.id, "reaped", expires_at=str(record.expires_at))
                reaped += 1
            except SandboxControlError as exc:
                log.warning("sandbox.reap_failed", sandbox_id=record.id, error=str(exc))
        return reaped

    async def reconcile(self) -> dict[str, int]:
        """Align the store with the provider; returns what it changed.

        Records still ``creating`` are adopted when the provider has the
        sandbox (with a TTL, since no caller may know it exists), else marked
        failed; statuses are refreshed (a ``warm`` pool member the provider
        reports running stays ``warm``); sandboxes the provider lost are marked
        deleted; managed provider objects with no live record are deleted.
        """
        counts = {"adopted": 0, "updated": 0, "vanished": 0, "orphans_deleted": 0}
        live = {p.labels.get(ID_LABEL, ""): p for p in await self._provider.list({MANAGED_LABEL: "true"})}
        replicas = await self._live_replicas()
        cutoff = utcnow() - self._grace
        for record in await self._records.list():
            found = live.pop(record.stable_key, None)
            if record.provider_object_id is None and record.status in ("creating", "failed"):
                if self._in_flight(record, replicas, cutoff):
                    continue
                if found is not None and record.status == "creating":
                    await self._adopt(record, found)
                    counts["adopted"] += 1
                elif found is not None:  # a failed create whose cleanup failed: finish it
                    live[record.stable_key] = found
                elif record.status == "creating":
                    await self._records.update(record.id, status="failed", error="creation was interrupted")
                continue
            if found is None:
                if record.status in ("running", "stopped", "warm", "deleting"):
                    await self._records.update(record.id, status="deleted", deleted_at=utcnow())
                    await self._records.add_event(record.id, "vanished")
                    counts["vanished"] += 1
                continue
            if await self._refresh(record, found):
                counts["updated"] += 1
        for key, orphan in live.items():
            if await self._delete_orphan(key, orphan, cutoff):
                counts["orphans_deleted"] += 1
        return counts

    def _in_flight(self, record: SandboxRecord, replicas: set[str], cutoff: Any) -> bool:
        """A create still running here or on a live replica (rows without an owner: too recent to tell)."""
        if self._busy(record.id):
            return True
        if record.status != "creating":
            return False
        if record.owner is not None:
            return record.owner in replicas
        return bool(record.created_at > cutoff)

    async def _adopt(self, record: SandboxRecord, found: ProviderSandbox) -> None:
        fields: dict[str, Any] = {"provider_object_id": found.provider_object_id, "status": found.status}
        if record.expires_at is None:
            fields.update(ttl_seconds=self._adopted_ttl, expires_at=utcnow() + timedelta(seconds=self._adopted_ttl))
        await self._records.update(record.id, **fields)
        await self._records.add_event(record.id, "adopted", expires_at=str(fields.get("expires_at", record.expires_at)))
        log.info("sandbox.adopted", sandbox_id=record.id, provider_object_id=found.provider_object_id)

    async def _refresh(self, record: SandboxRecord, found: ProviderSandbox) -> bool:
        """Make the record's status the provider's; True when it changed."""
        if record.status == "warm":
            # A warm pool member runs its runtime, waiting for a claim: the provider
            # says "running" and that is no change. Anything else means it can no longer
            # be claimed; conditional, so a claim that just won keeps its sandbox.
            if found.status != "running" and await self._records.transition(record.id, ["warm"], found.status):
                await self._records.add_event(record.id, "status_changed", old=record.status, new=found.status)
                return True
            return False
        if found.status != record.status and record.status in ("running", "stopped", "failed"):
            await self._records.update(record.id, status=found.status)
            await self._records.add_event(record.id, "status_changed", old=record.status, new=found.status)
            return True
        return False

    async def _delete_orphan(self, key: str, orphan: ProviderSandbox, cutoff: Any) -> bool:
        """Delete a provider object no live record owns, once it is surely not a create in flight."""
        if self._busy(key) or (orphan.created_at is not None and orphan.created_at > cutoff):
            return False
        owner = await self._records.get(key, include_deleted=True)
        if owner is not None and owner.status != "deleted":
            return False  # its record appeared since the listing (a create that just recorded it)
        try:
            await self._provider.delete(orphan.provider_object_id)
        except SandboxNotFound:
            return False
        log.info("sandbox.orphan_deleted", key=key, provider_object_id=orphan.provider_object_id)
        return True
