"""Daytona's control plane for sandboxes (``/daytona/api/sandbox``): HTTP translation only.

Paths, bodies and answers as the ``daytona`` SDK's generated ``SandboxApi``
has them; start and stop answer once done (``started`` / ``stopped``), so the
SDK's wait for the state ends at its first poll.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.api.daytona.deps import DaytonaSandboxesDep, ToolboxUrl
from app.api.daytona.mapping import STATE_FILTER, sandbox_dto
from app.api.deps import SandboxesDep
from app.errors import BadRequest
from app.schemas.daytona import CreateSandbox, SandboxLabels
from app.services.daytona_sandboxes import INTERVALS, PUBLIC, stored_labels

router = APIRouter(prefix="/daytona/api/sandbox", tags=["daytona"], include_in_schema=False)

MAX_PAGE = 200
IdOrName = Annotated[str, Path(min_length=1, max_length=256)]


def _label_filter(labels: str | None) -> dict[str, str]:
    if not labels:
        return {}
    try:
        parsed = json.loads(labels)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise BadRequest("labels must be a JSON object of strings", field="labels")
    return parsed


@router.post("")
async def create_sandbox(body: CreateSandbox, daytona: DaytonaSandboxesDep, toolbox: ToolboxUrl) -> dict[str, Any]:
    """Create from the default image, a snapshot (ours, by id or name) or an image; answers once started."""
    return sandbox_dto(await daytona.create(body), toolbox)


@router.get("")
async def list_sandboxes(
    sandboxes: SandboxesDep,
    toolbox: ToolboxUrl,
    labels: str | None = None,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,9}$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    states: Annotated[list[str] | None, Query()] = None,
    name: str | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """One page, oldest first; ``nextCursor`` names the next (null on the last)."""
    records = [r for r in await sandboxes.list(stored_labels(_label_filter(labels))) if r.status != "warm"]
    if states:
        wanted = {STATE_FILTER.get(state, state) for state in states}
        records = [r for r in records if r.status in wanted]
    if name:
        records = [r for r in records if r.id.lower().startswith(name.lower())]
    if id:
        records = [r for r in records if r.id.lower().startswith(id.lower())]
    start = int(cursor or 0)
    page = records[start : start + limit]
    more = start + limit < len(records)
    return {"items": [sandbox_dto(r, toolbox) for r in page], "nextCursor": str(start + limit) if more else None}


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox_id: IdOrName, sandboxes: SandboxesDep, toolbox: ToolboxUrl) -> dict[str, Any]:
    return sandbox_dto(await sandboxes.fresh(sandbox_id), toolbox)


@router.delete("/{sandbox_id}")
async def delete_sandbox(sandbox_id: IdOrName, sandboxes: SandboxesDep, toolbox: ToolboxUrl) -> dict[str, Any]:
    return sandbox_dto(await sandboxes.delete(sandbox_id), toolbox)


@router.post("/{sandbox_id}/start")
async def start_sandbox(sandbox_id: IdOrName, daytona: DaytonaSandboxesDep, toolbox: ToolboxUrl) -> dict[str, Any]:
    return sandbox_dto(await daytona.start(sandbox_id), toolbox)


@router.post("/{sandbox_id}/stop")
async def stop_sandbox(sandbox_id: IdOrName, daytona: DaytonaSandboxesDep, toolbox: ToolboxUrl) -> dict[str, Any]:
    """Stop, keeping the files; an ephemeral sandbox (``autoDeleteInterval`` 0) is deleted instead."""
    return sandbox_dto(await daytona.stop(sandbox_id), toolbox)


@router.post("/{sandbox_id}/recover")
async def recover_sandbox(sandbox_id: IdOrName, daytona: DaytonaSandboxesDep, toolbox: ToolboxUrl) -> dict[str, Any]:
    return sandbox_dto(await daytona.recover(sandbox_id), toolbox)


@router.put("/{sandbox_id}/labels")
async def replace_labels(sandbox_id: IdOrName, body: SandboxLabels, daytona: DaytonaSandboxesDep) -> dict[str, Any]:
    """Replace the caller's labels (the service's own stay)."""
    await daytona.set_labels(sandbox_id, body.labels)
    return {"labels": body.labels}


@router.get("/{sandbox_id}/toolbox-proxy-url")
async def toolbox_proxy_url(sandbox_id: IdOrName, sandboxes: SandboxesDep, toolbox: ToolboxUrl) -> dict[str, str]:
    """Where the SDK sends toolbox calls (it appends the sandbox id)."""
    await sandboxes.get(sandbox_id)
    return {"url": toolbox}


# Before the interval route: its path would match this one too.
@router.post("/{sandbox_id}/public/{is_public}")
async def set_public(
    sandbox_id: IdOrName, is_public: bool, daytona: DaytonaSandboxesDep, toolbox: ToolboxUrl
) -> dict[str, Any]:
    return sandbox_dto(await daytona.set_label(sandbox_id, PUBLIC, "true" if is_public else "false"), toolbox)


@router.post("/{sandbox_id}/{interval}/{minutes}")
async def set_interval(
    sandbox_id: IdOrName,
    interval: Annotated[str, Path(pattern=r"^(autostop|autoarchive|autodelete)$")],
    minutes: Annotated[int, Path(ge=-1, le=10_000_000)],
    daytona: DaytonaSandboxesDep,
    toolbox: ToolboxUrl,
) -> dict[str, Any]:
    """``set_autostop_interval`` and its kin: recorded (see ``app.services.daytona_sandboxes``)."""
    return sandbox_dto(await daytona.set_label(sandbox_id, INTERVALS[interval], str(minutes)), toolbox)


@router.post("/{sandbox_id}/snapshot")
async def snapshot_sandbox(
    sandbox_id: IdOrName,
    body: dict[str, Any],
    daytona: DaytonaSandboxesDep,
    sandboxes: SandboxesDep,
    toolbox: ToolboxUrl,
) -> dict[str, Any]:
    """``sandbox.create_snapshot(name)``: our snapshot of its files, found later by ``name``."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise BadRequest("name is required (at most 200 characters)", field="name")
    await daytona.snapshot(sandbox_id, name.strip())
    return sandbox_dto(await sandboxes.get(sandbox_id), toolbox)
