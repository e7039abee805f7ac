"""Daytona's snapshots (``/daytona/api/snapshots``) as our snapshots: workspace archives.

A Daytona snapshot here is one of ours: made by ``sandbox.create_snapshot(name)``
(or ``/v1``), named by that name or its id, restorable on any provider by
``daytona.create(CreateSandboxFromSnapshotParams(snapshot=name))``. Daytona's
other kind, an image registered under a name (``snapshot.create(image=...)``),
needs an image build this service does not do: refused with a 501 that says
so; create sandboxes from the image directly instead.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.api.daytona.deps import DaytonaSandboxesDep
from app.api.daytona.mapping import snapshot_dto
from app.api.deps import SnapshotsDep
from app.errors import NotSupported
from app.schemas.daytona import CreateSnapshot

router = APIRouter(prefix="/daytona/api/snapshots", tags=["daytona"], include_in_schema=False)

SnapshotName = Annotated[str, Path(min_length=1, max_length=256)]


@router.get("")
async def list_snapshots(
    snapshots: SnapshotsDep,
    page: Annotated[int, Query(ge=1)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> dict[str, Any]:
    """Ready and in-progress snapshots, newest first, one page."""
    records = sorted(await snapshots.list(), key=lambda r: r.created_at, reverse=True)
    items = records[(page - 1) * limit : page * limit]
    pages = max(1, -(-len(records) // limit))
    return {"items": [snapshot_dto(r) for r in items], "total": len(records), "page": page, "totalPages": pages}


@router.get("/{name}")
async def get_snapshot(name: SnapshotName, daytona: DaytonaSandboxesDep) -> dict[str, Any]:
    """By Daytona name (the newest of that name) or by id."""
    return snapshot_dto(await daytona.find_snapshot(name))


@router.delete("/{name}")
async def remove_snapshot(name: SnapshotName, daytona: DaytonaSandboxesDep, snapshots: SnapshotsDep) -> None:
    await snapshots.delete((await daytona.find_snapshot(name)).id)


@router.post("")
async def create_snapshot(body: CreateSnapshot) -> dict[str, Any]:
    raise NotSupported(
        f"creating snapshot {body.name!r} from an image needs an image build, which this service does not do; "
        "create sandboxes from the image directly (CreateSandboxFromImageParams), "
        "or snapshot a sandbox with sandbox.create_snapshot(name)"
    )
