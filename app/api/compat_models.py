"""Request models of the Open-Inspect compatible API (DESIGN 6).

Field names and defaults follow the wire format those control planes send;
unknown fields are refused like everywhere else.
"""

from __future__ import annotations

from pydantic import Field

from app.services.models import StrictModel

_NAME = r"^[A-Za-z0-9_.-]{1,100}$"


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
    sandbox_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
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
    sandbox_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
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
