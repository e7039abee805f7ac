"""Snapshots whose writer died: finish or fail them, and drop what they left in the bucket.

A replica killed while writing a snapshot leaves its record ``creating`` and,
on S3, a multipart upload that keeps its parts (and their cost) until
aborted. At start and on every reconciliation, under the reconcile lease,
each ``creating`` record whose writer is gone is settled:

* its manifest exists (the writer died between the commit point and the
  record update): the snapshot is whole, the record becomes ``ready``;
* otherwise it becomes ``failed``, the unfinished uploads of its archive are
  aborted and a partial archive is deleted, so no half snapshot survives.

The writer is gone when its replica no longer heartbeats, or when it is this
replica (a restart under a fixed ``REPLICA_ID``) and this process is not
writing it. Rows without an owner are settled only after the grace period.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from app.errors import SnapshotCorrupt, SnapshotNotFound
from app.logging import get_logger
from app.services.snapshots import ready_fields
from app.snapshots.manifest import blob_key
from app.snapshots.reader import delete_snapshot, load_manifest
from app.storage.blobs.base import BlobStore
from app.storage.state.snapshots import SnapshotRecord, SnapshotStore
from app.storage.state.times import utcnow

log = get_logger("snapshots")

INTERRUPTED = "interrupted: the service writing this snapshot stopped before it was complete"


class SnapshotRecovery:
    """Settle the ``creating`` snapshots of writers that are gone."""

    def __init__(
        self,
        records: SnapshotStore,
        blobs: BlobStore,
        *,
        replica_id: str,
        writing: Callable[[str], bool],
        live_replicas: Callable[[], Awaitable[set[str]]],
        grace_seconds: float,
    ) -> None:
        self._records = records
        self._blobs = blobs
        self._replica_id = replica_id
        self._writing = writing
        self._live_replicas = live_replicas
        self._grace = timedelta(seconds=grace_seconds)

    async def recover(self) -> dict[str, int]:
        """Settle every abandoned snapshot; returns how many became ready and failed."""
        counts = {"snapshots_completed": 0, "snapshots_failed": 0}
        stuck = await self._records.list(statuses=["creating"])
        if not stuck:
            return counts
        live = await self._live_replicas()
        cutoff = utcnow() - self._grace
        for record in stuck:
            if not self._abandoned(record, live, cutoff):
                continue
            completed = await self._settle(record)
            counts["snapshots_completed" if completed else "snapshots_failed"] += 1
        return counts

    def _abandoned(self, record: SnapshotRecord, live: set[str], cutoff: datetime) -> bool:
        if self._writing(record.id):
            return False
        if record.owner is None:
            return record.created_at < cutoff
        return record.owner == self._replica_id or record.owner not in live

    async def _settle(self, record: SnapshotRecord) -> bool:
        try:
            manifest = await load_manifest(self._blobs, record.id)
        except (SnapshotNotFound, SnapshotCorrupt):
            manifest = None  # a manifest that does not parse commits nothing either
        if manifest is not None:
            await self._records.update(record.id, status="ready", owner=None, **ready_fields(manifest))
            log.info("snapshot.recovered", snapshot_id=record.id, owner=record.owner)
            return True
        # Failed first: a record never points at blobs that are about to go.
        await self._records.update(record.id, status="failed", error=INTERRUPTED)
        aborted = await self._blobs.abort_uploads(blob_key(record.id))
        await delete_snapshot(self._blobs, record.id)
        log.warning("snapshot.abandoned", snapshot_id=record.id, owner=record.owner, uploads_aborted=aborted)
        return False
