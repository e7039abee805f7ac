"""The Open-Inspect wire format (DESIGN 6), thin over the services.

A control plane built for Open-Inspect's Daytona/Modal sandbox service points
its base URL here and works unchanged: envelope ``{"success": true, "data":
{...}}``, errors as everywhere (``{"success": false, "error", "code"}``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from app.api.deps import BuildsDep, LauncherDep, PoolsDep, PreviewsDep, RepoImagesDep, SnapshotsDep
from app.errors import SandboxControlError
from app.logging import get_logger
from app.schemas.common import REPO_PART_PATTERN
from app.schemas.compat import (
    CompatBuildRepoImage,
    CompatCreateSandbox,
    CompatDeleteProviderImage,
    CompatModel,
    CompatRestoreSandbox,
    CompatSnapshotSandbox,
    CompatWarmSandbox,
    ok,
    repo_image_data,
    sandbox_data,
)
from app.schemas.previews import CreatePreviewRequest

router = APIRouter(prefix="/api", tags=["compat"])
log = get_logger("compat")


class IgnoredFields:
    """Field names a control plane sent that this service ignores, each logged once (at debug).

    Bounded: a client inventing names cannot grow it without limit.
    """

    LIMIT = 1000

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def note(self, body: CompatModel, path: str) -> None:
        for name in body.ignored_fields():
            if name not in self._seen and len(self._seen) < self.LIMIT:
                self._seen.add(name)
                log.debug("compat.field_ignored", field=name, path=path)


def _ignoring(request: Request, body: CompatModel) -> None:
    ignored: IgnoredFields = request.app.state.compat_ignored_fields
    ignored.note(body, request.url.path)


async def _with_tunnels(
    data: dict[str, Any], ports: list[int], request: Request, previews: PreviewsDep
) -> dict[str, Any]:
    """``tunnel_urls {"<port>": url}`` for ``sandbox_settings.tunnelPorts``, as the Modal-era API answers.

    Each is a preview URL (path form) living as long as the sandbox (capped at the
    longest preview lifetime). A port the provider cannot reach is left out and
    logged: the sandbox exists, and failing the create would orphan it.
    """
    if not ports:
        return data
    urls: dict[str, str] = {}
    lifetime = previews.settings.preview_max_ttl_seconds
    for port in ports:
        spec = CreatePreviewRequest(port=port, expires_in_seconds=lifetime)
        try:
            urls[str(port)] = (await previews.create(data["sandbox_id"], spec, str(request.base_url))).url
        except SandboxControlError as exc:
            log.warning("compat.tunnel_unavailable", sandbox_id=data["sandbox_id"], port=port, error=exc.message)
    return {**data, "tunnel_urls": urls}


@router.post("/create-sandbox")
async def create_sandbox(
    request: Request, body: CompatCreateSandbox, launcher: LauncherDep, previews: PreviewsDep
) -> dict[str, Any]:
    """A session sandbox: clone, env server, bridge; `ready` follows on the control plane's WebSocket.

    A ready warm-pool member of the repository is claimed when there is one.
    With ``repo_image_id`` it boots from that repo image (fetch and reset to
    the branch head; setup.sh already ran in the build).
    """
    _ignoring(request, body)
    data = sandbox_data(await launcher.create_session(body))
    return ok(await _with_tunnels(data, body.tunnel_ports(), request, previews))


@router.post("/warm-sandbox")
async def warm_sandbox(request: Request, body: CompatWarmSandbox, pools: PoolsDep) -> dict[str, Any]:
    """Warm one sandbox of the repository (through its pool) for a session that is about to come.

    ``status`` is ``warm`` when a booted member is waiting, ``warming`` while one boots.
    """
    _ignoring(request, body)
    record = await pools.warm_repo(body.repo_owner, body.repo_name, body.control_plane_url)
    return ok({"sandbox_id": record.id, "status": "warm" if record.status == "warm" else "warming"})


@router.post("/snapshot-sandbox")
async def snapshot_sandbox(request: Request, body: CompatSnapshotSandbox, snapshots: SnapshotsDep) -> dict[str, Any]:
    """Snapshot a sandbox named by its logical or its provider id."""
    _ignoring(request, body)
    record = await snapshots.snapshot(body.sandbox_id, reason=body.reason, session_id=body.session_id)
    return ok(
        {"image_id": record.id, "sandbox_id": record.sandbox_id, "session_id": record.session_id, "reason": body.reason}
    )


@router.post("/restore-sandbox")
async def restore_sandbox(
    request: Request, body: CompatRestoreSandbox, launcher: LauncherDep, previews: PreviewsDep
) -> dict[str, Any]:
    """A new session sandbox from a snapshot; the conversation continues."""
    _ignoring(request, body)
    data = sandbox_data(await launcher.restore_session(body))
    data.pop("created_at")
    return ok(await _with_tunnels(data, body.tunnel_ports(), request, previews))


@router.post("/build-repo-image")
async def build_repo_image(request: Request, body: CompatBuildRepoImage, builds: BuildsDep) -> dict[str, Any]:
    """Queue a repo image build; answered at once, the result comes by signed callback."""
    _ignoring(request, body)
    record = await builds.submit(
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
async def delete_provider_image(
    request: Request, body: CompatDeleteProviderImage, repo_images: RepoImagesDep
) -> dict[str, Any]:
    """Delete a repo image; ``deleted`` is true only if it existed and is gone (false for ids not held here)."""
    _ignoring(request, body)
    deleted = await repo_images.delete(body.provider_image_id)
    return ok({"provider_image_id": body.provider_image_id, "deleted": deleted})


@router.get("/snapshot")
async def latest_repo_image(
    repo_images: RepoImagesDep,
    builds: BuildsDep,
    repo_owner: str = Query(pattern=REPO_PART_PATTERN),
    repo_name: str = Query(pattern=REPO_PART_PATTERN),
) -> dict[str, Any]:
    """The latest ready repo image of a repository (the reference's ``Snapshot`` shape), or ``null``."""
    image = await repo_images.latest(repo_owner, repo_name)
    if image is None:
        return ok(None)
    return ok(repo_image_data(image, await builds.find(image.build_id)))
