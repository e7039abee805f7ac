"""Crash recovery of snapshots: whose ``creating`` record counts as abandoned, and what settling it leaves.

The SIGKILL of a real service mid-upload on a real S3 server is in
tests/e2e/test_crash_recovery.py; here the rules, on a real state store and
a directory blob store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.services.snapshot_recovery import INTERRUPTED, SnapshotRecovery
from app.snapshots.manifest import blob_key, manifest_key
from app.snapshots.writer import write_snapshot
from app.storage.blobs.directory import DirectoryBlobStore
from app.storage.state import StateStore
from app.storage.state.snapshots import SnapshotRecord
from app.storage.state.times import utcnow
from tests.support_tree import tar_stream

SELF = "replica-self"
LIVE = "replica-live"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    opened = StateStore(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    await opened.open()
    yield opened
    await opened.aclose()


async def _creating(store: StateStore, snapshot_id: str, owner: str | None, age_seconds: float = 0) -> None:
    at = utcnow() - timedelta(seconds=age_seconds)
    await store.snapshots.insert(
        SnapshotRecord(
            id=snapshot_id, sandbox_id="sbx_x", provider="local", status="creating",
            created_at=at, updated_at=at, owner=owner,
        )
    )  # fmt: skip


def _part_file(blobs: DirectoryBlobStore, snapshot_id: str) -> Path:
    """What a writer killed mid-upload leaves in a directory store."""
    final = blobs.root / blob_key(snapshot_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f".{final.name}.abc123.part")
    part.write_bytes(b"half an archive")
    return part


async def test_only_the_snapshots_of_writers_that_are_gone_are_settled(store: StateStore, tmp_path: Path) -> None:
    blobs = DirectoryBlobStore(tmp_path / "blobs", fsync=False)
    await blobs.open()
    writing = {"snap_selfbusy"}
    await _creating(store, "snap_deadowner", "replica-dead")
    await _creating(store, "snap_liveowner", LIVE)
    await _creating(store, "snap_selfbusy", SELF)
    await _creating(store, "snap_selfidle", SELF)  # this replica before a restart under a fixed id
    await _creating(store, "snap_noowneryoung", None, age_seconds=5)
    await _creating(store, "snap_nownerold", None, age_seconds=600)
    parts = {sid: _part_file(blobs, sid) for sid in ("snap_deadowner", "snap_liveowner", "snap_selfidle")}

    async def live() -> set[str]:
        return {SELF, LIVE}

    recovery = SnapshotRecovery(
        store.snapshots, blobs, replica_id=SELF, writing=writing.__contains__, live_replicas=live, grace_seconds=120
    )
    assert await recovery.recover() == {"snapshots_completed": 0, "snapshots_failed": 3}
    statuses = {r.id: (r.status, r.error) for r in await store.snapshots.list()}
    assert statuses == {
        "snap_deadowner": ("failed", INTERRUPTED),
        "snap_selfidle": ("failed", INTERRUPTED),
        "snap_nownerold": ("failed", INTERRUPTED),
        "snap_liveowner": ("creating", None),
        "snap_selfbusy": ("creating", None),
        "snap_noowneryoung": ("creating", None),
    }
    assert [sid for sid, part in parts.items() if part.exists()] == ["snap_liveowner"]
    assert await recovery.recover() == {"snapshots_completed": 0, "snapshots_failed": 0}  # settled once


async def test_a_writer_that_died_after_the_manifest_leaves_a_ready_snapshot(store: StateStore, tmp_path: Path) -> None:
    blobs = DirectoryBlobStore(tmp_path / "blobs", fsync=False)
    await blobs.open()
    source = tmp_path / "src"
    source.mkdir()
    (source / "kept.txt").write_text("the commit point was reached")
    await _creating(store, "snap_committed", "replica-dead")
    manifest = await write_snapshot(
        blobs, snapshot_id="snap_committed", sandbox_id="sbx_x", provider="local", paths=["/workspace"],
        export=lambda _path: tar_stream(source),
    )  # fmt: skip

    async def nobody() -> set[str]:
        return set()

    recovery = SnapshotRecovery(
        store.snapshots, blobs, replica_id=SELF, writing=lambda _id: False, live_replicas=nobody, grace_seconds=120
    )
    assert await recovery.recover() == {"snapshots_completed": 1, "snapshots_failed": 0}
    record = await store.snapshots.get("snap_committed")
    assert record is not None
    assert (record.status, record.sha256, record.file_count) == ("ready", manifest.sha256, manifest.file_count)
    assert await blobs.exists(manifest_key("snap_committed")) and await blobs.exists(blob_key("snap_committed"))
