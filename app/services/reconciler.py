"""Background duties over every sandbox: TTL reaping and reconciliation with the provider.

The state store is the service's memory; the provider is the truth about what
runs. After a restart or a crash the reconciler makes the store agree with the
provider: it adopts what a create left behind, marks what vanished, and deletes
provider objects that no live record owns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from app.errors import SandboxControlError, SandboxNotFound
from app.logging import get_logger
from app.providers.base import Provider
from app.services.sandboxes import ID_LABEL, MANAGED_LABEL
from app.storage.state.sandboxes import SandboxStore
from app.storage.state.times import utcnow

log = get_logger("sandboxes")


class Reconciler:
    """Reaps expired sandboxes and aligns the store with the provider.

    ``busy(sandbox_id)`` says whether this process is creating that sandbox
    right now (its record may legitimately have no provider object yet);
    ``delete(sandbox_id)`` is the sandbox service's delete.
    """

    def __init__(
        self,
        records: SandboxStore,
        provider: Provider,
        *,
        busy: Callable[[str], bool],
        delete: Callable[[str], Awaitable[Any]],
    ) -> None:
        self._records = records
        self._provider = provider
        self._busy = busy
        self._delete = delete

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
        """Align the store with the provider after a restart or a crash.

        Records still ``creating`` are adopted when the provider has the
        sandbox, else marked failed; statuses are refreshed (a ``warm`` pool
        member the provider reports running stays ``warm``); sandboxes the
        provider lost are marked deleted; managed provider sandboxes with no
        live record (a crash between create and record) are deleted.
        """
        counts = {"adopted": 0, "updated": 0, "vanished": 0, "orphans_deleted": 0}
        live = {p.labels.get(ID_LABEL, ""): p for p in await self._provider.list({MANAGED_LABEL: "true"})}
        for record in await self._records.list():
            found = live.pop(record.stable_key, None)
            if record.provider_object_id is None and record.status in ("creating", "failed"):
                if self._busy(record.id):  # a create in progress in this process
                    continue
                if found is not None and record.status == "creating":
                    await self._records.update(
                        record.id, provider_object_id=found.provider_object_id, status=found.status
                    )
                    await self._records.add_event(record.id, "adopted")
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
            if record.status == "warm":
                # A warm pool member runs its runtime, waiting for a claim: the provider
                # says "running" and that is no change. Anything else means it can no longer
                # be claimed; conditional, so a claim that just won keeps its sandbox.
                if found.status != "running" and await self._records.transition(record.id, ["warm"], found.status):
                    await self._records.add_event(record.id, "status_changed", old=record.status, new=found.status)
                    counts["updated"] += 1
                continue
            if found.status != record.status and record.status in ("running", "stopped", "failed"):
                await self._records.update(record.id, status=found.status)
                await self._records.add_event(record.id, "status_changed", old=record.status, new=found.status)
                counts["updated"] += 1
        for sandbox_id, orphan in live.items():
            # Left in ``live``: no record in a live state. Skip creates in flight here.
            if self._busy(sandbox_id):
                continue
            try:
                await self._provider.delete(orphan.provider_object_id)
                counts["orphans_deleted"] += 1
            except SandboxNotFound:
                pass
        return counts
