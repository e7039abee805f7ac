"""The Open-Inspect wire format (DESIGN 6), thin over the services.

A control plane built for Open-Inspect's Daytona/Modal sandbox service points
its base URL here and works unchanged: envelope ``{"success": true, "data":
{...}}``, errors as everywhere (``{"success": false, "error", "code"}``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.compat_models import (
    CompatCreateSandbox,
    CompatRestoreSandbox,
    CompatSnapshotSandbox,
    CompatWarmSandbox,
)
from app.api.deps import ServicesDep
from app.errors import UnsupportedSpec
from app.services.sessions import SessionLaunch
from app.storage.state import SandboxRecord
from sandbox_runtime.contract import SessionConfig

router = APIRouter(prefix="/api", tags=["compat"])


def ok(data: dict[str, Any]) -> dict[str, Any]:
    return {"success": True, "data": data}


def _sandbox_data(record: SandboxRecord) -> dict[str, Any]:
    return {
        "sandbox_id": record.id,
        "provider_object_id": record.provider_object_id,
        # Open-Inspect control planes read this name; it is the provider's id here too.
        "modal_object_id": record.provider_object_id,
        "status": record.status,
        "created_at": record.created_at.timestamp(),
    }


@router.post("/create-sandbox")
async def create_sandbox(body: CompatCreateSandbox, services: ServicesDep) -> dict[str, Any]:
    """A session sandbox: clone, env server, bridge; `ready` follows on the control plane's WebSocket."""
    if body.repo_image_id:
        raise UnsupportedSpec("repo_image_id", services.provider.name, "repo images are not available in this release")
    session = SessionConfig(
        session_id=body.session_id,
        repo_owner=body.repo_owner,
        repo_name=body.repo_name,
        branch=body.branch,
        provider=body.provider,
        model=body.model,
        opencode_session_id=body.opencode_session_id,
    )
    # Warm first: a ready pool member of the repository is claimed, else a cold create.
    record = await services.pools.launch(
        SessionLaunch(
            session=session,
            control_plane_url=body.control_plane_url,
            sandbox_auth_token=body.sandbox_auth_token,
            sandbox_id=body.sandbox_id,
            user_env=dict(body.user_env_vars or {}),
            snapshot_id=body.snapshot_id,
            ttl_seconds=body.timeout_seconds,
        )
    )
    return ok(_sandbox_data(record))


@router.post("/warm-sandbox")
async def warm_sandbox(body: CompatWarmSandbox, services: ServicesDep) -> dict[str, Any]:
    """Warm one sandbox of the repository (through its pool) for a session that is about to come.

    ``status`` is ``warm`` when a booted member is waiting, ``warming`` while one boots.
    """
    record = await services.pools.warm_repo(body.repo_owner, body.repo_name, body.control_plane_url)
    return ok({"sandbox_id": record.id, "status": "warm" if record.status == "warm" else "warming"})


@router.post("/snapshot-sandbox")
async def snapshot_sandbox(body: CompatSnapshotSandbox, services: ServicesDep) -> dict[str, Any]:
    """Snapshot a sandbox named by its logical or its provider id."""
    record = await services.snapshots.snapshot(body.sandbox_id, reason=body.reason, session_id=body.session_id)
    return ok(
        {"image_id": record.id, "sandbox_id": record.sandbox_id, "session_id": record.session_id, "reason": body.reason}
    )


@router.post("/restore-sandbox")
async def restore_sandbox(body: CompatRestoreSandbox, services: ServicesDep) -> dict[str, Any]:
    """A new session sandbox from a snapshot; the conversation continues."""
    config = body.session_config
    session = SessionConfig(**config.model_dump())
    record = await services.sessions.launch(
        SessionLaunch(
            session=session,
            control_plane_url=body.control_plane_url,
            sandbox_auth_token=body.sandbox_auth_token,
            sandbox_id=body.sandbox_id,
            user_env=dict(body.user_env_vars or {}),
            snapshot_id=body.snapshot_image_id,
            ttl_seconds=body.timeout_seconds,
        )
    )
    data = _sandbox_data(record)
    data.pop("created_at")
    return ok(data)
