"""Snapshots: take one of a sandbox, read, list, delete, restore. HTTP translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api.deps import IdempotencyDep, SnapshotsDep
from app.api.idempotency import run_idempotent
from app.api.params import SandboxIdPath, SnapshotIdPath
from app.schemas.sandboxes import SandboxView
from app.schemas.snapshots import CreateSnapshotRequest, RestoreRequest, SnapshotList, SnapshotView
from app.services.sandboxes import new_sandbox_id
from app.services.snapshots import new_snapshot_id

router = APIRouter(tags=["snapshots"])


@router.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=201, response_model=SnapshotView)
async def create_snapshot(
    sandbox_id: SandboxIdPath,
    body: CreateSnapshotRequest,
    request: Request,
    snapshots: SnapshotsDep,
    idempotency: IdempotencyDep,
) -> Response:
    """Snapshot a running sandbox's workspace (and env server state) to the blob store.

    With an ``Idempotency-Key`` header a retry gets the first answer again.
    """

    async def run(snapshot_id: str | None, resumed: bool) -> SnapshotView:
        record = await snapshots.snapshot(
            sandbox_id, reason=body.reason, session_id=body.session_id, snapshot_id=snapshot_id, resume=resumed
        )
        return SnapshotView.of(record)

    return await run_idempotent(
        request,
        idempotency,
        scope=f"POST /v1/sandboxes/{sandbox_id}/snapshots",
        payload=body.model_dump(mode="json"),
        new_id=new_snapshot_id,
        run=run,
        status_code=201,
    )


@router.get("/v1/sandboxes/{sandbox_id}/snapshots")
async def list_sandbox_snapshots(sandbox_id: SandboxIdPath, snapshots: SnapshotsDep) -> SnapshotList:
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
async def get_snapshot(snapshot_id: SnapshotIdPath, snapshots: SnapshotsDep) -> SnapshotView:
    return SnapshotView.of(await snapshots.get(snapshot_id))


@router.delete("/v1/snapshots/{snapshot_id}")
async def delete_snapshot(snapshot_id: SnapshotIdPath, snapshots: SnapshotsDep) -> SnapshotView:
    """Delete the manifest (first: the snapshot stops existing) and the blob."""
    return SnapshotView.of(await snapshots.delete(snapshot_id))


@router.post("/v1/snapshots/{snapshot_id}/restore", status_code=201, response_model=SandboxView)
async def restore_snapshot(
    snapshot_id: SnapshotIdPath,
    body: RestoreRequest,
    request: Request,
    snapshots: SnapshotsDep,
    idempotency: IdempotencyDep,
) -> Response:
    """A new sandbox (on this service's provider) holding the snapshot's files.

    With an ``Idempotency-Key`` header a retry gets the first answer again.
    """

    async def run(sandbox_id: str | None, resumed: bool) -> SandboxView:
        wanted = body if sandbox_id is None else body.model_copy(update={"sandbox_id": sandbox_id})
        return SandboxView.of(await snapshots.restore(snapshot_id, wanted, resume=resumed))

    return await run_idempotent(
        request,
        idempotency,
        scope=f"POST /v1/snapshots/{snapshot_id}/restore",
        payload=body.model_dump(mode="json"),
        new_id=lambda: body.sandbox_id or new_sandbox_id(),
        run=run,
        status_code=201,
    )
