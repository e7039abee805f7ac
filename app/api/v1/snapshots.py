"""Snapshots: take one of a sandbox, read, list, delete, restore. HTTP translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SnapshotsDep
from app.schemas.sandboxes import SandboxView
from app.schemas.snapshots import CreateSnapshotRequest, RestoreRequest, SnapshotList, SnapshotView

router = APIRouter(tags=["snapshots"])


@router.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(sandbox_id: str, body: CreateSnapshotRequest, snapshots: SnapshotsDep) -> SnapshotView:
    """Snapshot a running sandbox's workspace (and env server state) to the blob store."""
    return SnapshotView.of(await snapshots.snapshot(sandbox_id, reason=body.reason, session_id=body.session_id))


@router.get("/v1/sandboxes/{sandbox_id}/snapshots")
async def list_sandbox_snapshots(sandbox_id: str, snapshots: SnapshotsDep) -> SnapshotList:
    """Snapshots of one sandbox, newest first."""
    records = await snapshots.list(sandbox_id=sandbox_id)
    return SnapshotList(snapshots=[SnapshotView.of(r) for r in records])


@router.get("/v1/snapshots")
async def list_snapshots(
    snapshots: SnapshotsDep,
    sandbox_id: Annotated[str | None, Query(max_length=256)] = None,
    session_id: Annotated[str | None, Query(max_length=256)] = None,
) -> SnapshotList:
    """Snapshots filtered by sandbox or session, newest first."""
    records = await snapshots.list(sandbox_id=sandbox_id, session_id=session_id)
    return SnapshotList(snapshots=[SnapshotView.of(r) for r in records])


@router.get("/v1/snapshots/{snapshot_id}")
async def get_snapshot(snapshot_id: str, snapshots: SnapshotsDep) -> SnapshotView:
    return SnapshotView.of(await snapshots.get(snapshot_id))


@router.delete("/v1/snapshots/{snapshot_id}")
async def delete_snapshot(snapshot_id: str, snapshots: SnapshotsDep) -> SnapshotView:
    """Delete the manifest (first: the snapshot stops existing) and the blob."""
    return SnapshotView.of(await snapshots.delete(snapshot_id))


@router.post("/v1/snapshots/{snapshot_id}/restore", status_code=201)
async def restore_snapshot(snapshot_id: str, body: RestoreRequest, snapshots: SnapshotsDep) -> SandboxView:
    """A new sandbox (on this service's provider) holding the snapshot's files."""
    return SandboxView.of(await snapshots.restore(snapshot_id, body))
