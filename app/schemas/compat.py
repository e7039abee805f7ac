"""Request models of the Open-Inspect compatible API (DESIGN 6).

Field names and defaults follow the wire format those control planes send;
unknown fields are refused like everywhere else.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app.schemas.common import REPO_PART_PATTERN, SANDBOX_ID_PATTERN, StrictModel
from app.storage.state.repo_images import RepoImageRecord
from app.storage.state.sandboxes import SandboxRecord

_NAME = REPO_PART_PATTERN


class SessionConfigIn(StrictModel):
    session_id: str = Field(min_length=1, max_length=256)
    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    provider: str = Field(default="anthropic", max_length=64)
    model: str = Field(default="claude-sonnet-4-6", max_length=128)
    branch: str | None = Field(default=None, min_length=1, max_length=255)
    opencode_session_id: str | None = Field(default=None, max_length=256)


class CompatCreateSandbox(StrictModel):
    """``POST /api/create-sandbox``."""

    session_id: str = Field(min_length=1, max_length=256)
    sandbox_id: str | None = Field(default=None, pattern=SANDBOX_ID_PATTERN)
    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    control_plane_url: str = Field(min_length=1, max_length=2048)
    sandbox_auth_token: str = Field(min_length=1, max_length=4096)
    snapshot_id: str | None = Field(default=None, max_length=128)
    opencode_session_id: str | None = Field(default=None, max_length=256)
    provider: str = Field(default="anthropic", max_length=64)
    model: str = Field(default="claude-sonnet-4-6", max_length=128)
    branch: str | None = Field(default=None, min_length=1, max_length=255)
    user_env_vars: dict[str, str] | None = None
    repo_image_id: str | None = Field(default=None, max_length=256)
    repo_image_sha: str | None = Field(default=None, max_length=64)
    timeout_seconds: int | None = Field(default=None, ge=1)


class CompatSnapshotSandbox(StrictModel):
    """``POST /api/snapshot-sandbox``: the sandbox by its logical or its provider id."""

    sandbox_id: str = Field(min_length=1, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    reason: str = Field(default="manual", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class CompatRestoreSandbox(StrictModel):
    """``POST /api/restore-sandbox``."""

    snapshot_image_id: str = Field(min_length=1, max_length=128)
    session_config: SessionConfigIn
    sandbox_id: str | None = Field(default=None, pattern=SANDBOX_ID_PATTERN)
    control_plane_url: str = Field(min_length=1, max_length=2048)
    sandbox_auth_token: str = Field(min_length=1, max_length=4096)
    user_env_vars: dict[str, str] | None = None
    timeout_seconds: int | None = Field(default=None, ge=1)


class CompatWarmSandbox(StrictModel):
    """``POST /api/warm-sandbox``: keep a sandbox of the repository booted for the next session."""

    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    control_plane_url: str | None = Field(default=None, min_length=1, max_length=2048)


class CompatBuildRepoImage(StrictModel):
    """``POST /api/build-repo-image``: answered at once; the outcome arrives by callback."""

    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    build_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    default_branch: str = Field(default="main", min_length=1, max_length=255)
    callback_url: str = Field(min_length=1, max_length=2048)
    user_env_vars: dict[str, str] | None = None


class CompatDeleteProviderImage(StrictModel):
    """``POST /api/delete-provider-image``."""

    provider_image_id: str = Field(min_length=1, max_length=256)


def sandbox_data(record: SandboxRecord) -> dict[str, Any]:
    """``data`` of create-sandbox (restore-sandbox drops ``created_at``)."""
    return {
        "sandbox_id": record.id,
        "provider_object_id": record.provider_object_id,
        # Open-Inspect control planes read this name; it is the provider's id here too.
        "modal_object_id": record.provider_object_id,
        "status": record.status,
        "created_at": record.created_at.timestamp(),
    }


def repo_image_data(image: RepoImageRecord) -> dict[str, Any]:
    """``data`` of ``GET /api/snapshot``: a repository's latest ready repo image."""
    return {
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


def ok(data: dict[str, Any] | None) -> dict[str, Any]:
    """The compat envelope of a success."""
    return {"success": True, "data": data}
