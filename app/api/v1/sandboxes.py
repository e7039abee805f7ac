"""``/v1/sandboxes``: lifecycle, exec and files. HTTP translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import SandboxesDep, ServicesDep
from app.errors import BadRequest
from app.services.models import (
    CreateSandboxRequest,
    EventList,
    EventView,
    ExecRequest,
    ExecResponse,
    RepoRef,
    SandboxList,
    SandboxView,
    validate_labels,
)
from app.services.sessions import SessionLaunch
from app.storage.state import SandboxRecord
from sandbox_runtime.contract import SessionConfig

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

PathQuery = Annotated[str, Query(min_length=1, max_length=4096, description="absolute, or relative to /workspace")]


def to_view(record: SandboxRecord) -> SandboxView:
    repo = f"{record.repo_owner}/{record.repo_name}" if record.repo_owner and record.repo_name else None
    return SandboxView(
        id=record.id,
        provider=record.provider,
        provider_object_id=record.provider_object_id,
        status=record.status,
        image=record.image,
        labels=record.labels,
        resources=record.resources,
        network=record.network,
        created_at=record.created_at,
        updated_at=record.updated_at,
        expires_at=record.expires_at,
        session_id=record.session_id,
        repo=repo,
        error=record.error,
    )


def parse_label_filters(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq:
            raise BadRequest(f"label filter {item!r} must be key=value", field="label")
        labels[key] = value
    try:
        return validate_labels(labels, allow_reserved=True)
    except ValueError as exc:
        raise BadRequest(str(exc), field="label") from None


@router.post("", status_code=201)
async def create_sandbox(body: CreateSandboxRequest, services: ServicesDep) -> SandboxView:
    """Create a sandbox; answers once it can run commands.

    ``repo`` + ``session``: a session sandbox (the runtime clones, starts the env
    server and the bridge); a ready warm-pool member of the repository is claimed
    when there is one, else the sandbox is created cold. ``from_pool`` (needs
    ``session``; ``repo`` defaults to the pool's): claim from that pool, cold
    when it has no ready member. ``from_snapshot``: restored from a snapshot.
    """
    if body.from_pool:
        if body.repo is None:  # the pool knows its repository
            pool = await services.pools.get(body.from_pool)
            body = body.model_copy(update={"repo": RepoRef(owner=pool.repo_owner, name=pool.repo_name)})
        return to_view(await services.pools.launch(session_launch(body), pool_name=body.from_pool))
    if body.repo is not None or body.session is not None:
        return to_view(await services.pools.launch(session_launch(body)))
    if body.from_snapshot:
        return to_view(await services.snapshots.restore(body.from_snapshot, body))
    return to_view(await services.sandboxes.create(body))


def session_launch(body: CreateSandboxRequest) -> SessionLaunch:
    if body.repo is None or body.session is None:
        raise BadRequest(
            "a session sandbox needs both repo and session", field="repo" if body.repo is None else "session"
        )
    if body.command is not None:
        raise BadRequest("a session sandbox runs the runtime; command must be absent", field="command")
    session = SessionConfig(
        session_id=body.session.session_id,
        repo_owner=body.repo.owner,
        repo_name=body.repo.name,
        branch=body.repo.branch,
        provider=body.session.provider,
        model=body.session.model,
        opencode_session_id=body.session.opencode_session_id,
    )
    return SessionLaunch(
        session=session,
        control_plane_url=body.session.control_plane_url,
        sandbox_auth_token=body.session.sandbox_auth_token,
        sandbox_id=body.sandbox_id,
        user_env=dict(body.env),
        snapshot_id=body.from_snapshot,
        ttl_seconds=body.ttl_seconds,
        labels=dict(body.labels),
        resources=body.resources,
        image=body.image,
    )


@router.get("")
async def list_sandboxes(
    sandboxes: SandboxesDep,
    label: Annotated[list[str], Query(max_length=64)] = [],  # noqa: B006
) -> SandboxList:
    """List live sandboxes, optionally filtered by ``label=key=value`` (repeatable, all must match)."""
    records = await sandboxes.list(parse_label_filters(label))
    return SandboxList(sandboxes=[to_view(r) for r in records])


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox_id: str, sandboxes: SandboxesDep) -> SandboxView:
    """One sandbox, by its id or its provider object id."""
    return to_view(await sandboxes.get(sandbox_id))


@router.delete("/{sandbox_id}")
async def delete_sandbox(sandbox_id: str, sandboxes: SandboxesDep) -> SandboxView:
    """Delete a sandbox and its filesystem."""
    return to_view(await sandboxes.delete(sandbox_id))


@router.post("/{sandbox_id}/stop")
async def stop_sandbox(sandbox_id: str, sandboxes: SandboxesDep) -> SandboxView:
    """End every process, keep the filesystem."""
    return to_view(await sandboxes.stop(sandbox_id))


@router.post("/{sandbox_id}/start")
async def start_sandbox(sandbox_id: str, sandboxes: SandboxesDep) -> SandboxView:
    """Resume a stopped sandbox."""
    return to_view(await sandboxes.start(sandbox_id))


@router.get("/{sandbox_id}/events")
async def sandbox_events(sandbox_id: str, sandboxes: SandboxesDep) -> EventList:
    """What happened to a sandbox, oldest first."""
    record = await sandboxes.get(sandbox_id)
    events = await sandboxes.store.list_events(record.id)
    return EventList(events=[EventView(**e) for e in events])


@router.post("/{sandbox_id}/exec")
async def exec_in_sandbox(sandbox_id: str, body: ExecRequest, sandboxes: SandboxesDep) -> ExecResponse:
    """Run a command with a hard timeout; a non-zero exit is a result, not an error."""
    result = await sandboxes.exec(sandbox_id, body)
    return ExecResponse(
        exit_code=result.exit_code,
        stdout=result.stdout.decode(errors="replace"),
        stderr=result.stderr.decode(errors="replace"),
        timed_out=result.timed_out,
        truncated=result.truncated,
        duration_ms=result.duration_ms,
    )


@router.put("/{sandbox_id}/files", status_code=204)
async def upload_file(sandbox_id: str, path: PathQuery, request: Request, sandboxes: SandboxesDep) -> Response:
    """Write one file from the raw request body (streamed; parents created)."""
    limit = sandboxes.settings.max_upload_bytes
    await sandboxes.write_file(sandbox_id, path, request.stream(), limit=limit)
    return Response(status_code=204)


@router.get("/{sandbox_id}/files")
async def download_file(sandbox_id: str, path: PathQuery, sandboxes: SandboxesDep) -> StreamingResponse:
    """Read one file as raw bytes (streamed)."""
    chunks = await sandboxes.read_file(sandbox_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")
