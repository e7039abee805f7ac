"""The Open-Inspect wire format (DESIGN 6), thin over the services.

A control plane built for Open-Inspect's Daytona/Modal sandbox service points
its base URL here and works unchanged: envelope ``{"success": true, "data":
{...}}``, errors as everywhere (``{"success": false, "error", "code"}``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app.api.compat_models import (
    CompatBuildRepoImage,
    CompatCreateSandbox,
    CompatDeleteProviderImage,
    CompatRestoreSandbox,
    CompatSnapshotSandbox,
    CompatWarmSandbox,
)
from app.api.deps import ServicesDep
from app.services.sessions import SessionLaunch
from app.storage.state import SandboxRecord
from sandbox_runtime.contract import SessionConfig

router = APIRouter(prefix="/api", tags=["compat"])


def ok(data: dict[str, Any] | None) -> dict[str, Any]:
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
    """A session sandbox: clone, env server, bridge; `ready` follows on the control plane's WebSocket.

    With ``repo_image_id`` it boots from that repo image (fetch and reset to
    the branch head; setup.sh already ran in the build).
    """
    repo_image = await services.repo_images.get(body.repo_image_id) if body.repo_image_id else None
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
            repo_image=repo_image,
            repo_image_sha=body.repo_image_sha,
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


@router.post("/build-repo-image")
async def build_repo_image(body: CompatBuildRepoImage, services: ServicesDep) -> dict[str, Any]:
    """Queue a repo image build; answered at once, the result comes by signed callback."""
    record = await services.builds.submit(
        build_id=body.build_id,
        repo_owner=body.repo_owner,
        repo_name=body.repo_name,
        branch=body.default_branch,
        callback_url=body.callback_url,
        env=body.user_env_vars or {},
    )
    status = "building" if record.active else record.status
    return ok({"build_id": record.id, "status": status})


@router.post("/delete-provider-image")
async def delete_provider_image(body: CompatDeleteProviderImage, services: ServicesDep) -> dict[str, Any]:
    """Delete a repo image; ``deleted`` is true only if it existed and is gone."""
    deleted = await services.repo_images.delete(body.provider_image_id)
    return ok({"provider_image_id": body.provider_image_id, "deleted": deleted})


@router.get("/snapshot")
async def latest_repo_image(
    services: ServicesDep,
    repo_owner: str = Query(pattern=r"^[A-Za-z0-9_.-]{1,100}$"),
    repo_name: str = Query(pattern=r"^[A-Za-z0-9_.-]{1,100}$"),
) -> dict[str, Any]:
    """The latest ready repo image of a repository, or ``null``."""
    image = await services.repo_images.latest(repo_owner, repo_name)
    if image is None:
        return ok(None)
    return ok(
        {
            "provider_image_id": image.id,
            "image_id": image.id,
            "repo_owner": image.repo_owner,
            "repo_name": image.repo_name,
            "base_sha": image.base_sha,
            "branch": image.branch,
            "build_id": image.build_id,
            "status": image.status,
            "created_at": image.created_at.timestamp(),
        }
    )
