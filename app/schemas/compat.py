"""Request models and answers of the Open-Inspect compatible API (DESIGN 6).

Field names and defaults follow the wire format those control planes send.
Unlike ``/v1`` these models are tolerant, as the reference services are:

* unknown fields are accepted and ignored (a Modal-era control plane sends
  ``code_server_enabled``, ``mcp_servers``, ``repositories``, ...); they are
  kept in ``model_extra`` so the route can log each name once;
* an empty string counts as absent (``control_plane_url: ""`` is "none");
* a missing required field is a 400 with the reference's message
  (``snapshot_image_id is required``), answered by ``app.api.errors``.

What maps onto ours is honoured: ``sandbox_settings.cpuCores``/``memoryMib``
become resources, ``timeout_seconds`` is the sandbox's TTL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.providers.base import Resources
from app.schemas.builds import BUILD_ID_PATTERN
from app.schemas.common import REPO_PART_PATTERN, SANDBOX_ID_PATTERN, CommitSha
from app.storage.state.builds import BuildRecord
from app.storage.state.repo_images import RepoImageRecord
from app.storage.state.sandboxes import SandboxRecord

_NAME = REPO_PART_PATTERN
#: The reference's wording, which control planes may match on.
TIMEOUT_MESSAGE = "timeout_seconds must be a positive integer"


class CompatModel(BaseModel):
    """A tolerant compat request: unknown fields set aside, empty strings absent."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _empty_strings_are_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != ""}
        return data

    def ignored_fields(self, prefix: str = "") -> list[str]:
        """Names of the fields this service ignores, nested ones dotted (for the log)."""
        names = [prefix + name for name in self.model_extra or {}]
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, CompatModel):
                names += value.ignored_fields(f"{prefix}{name}.")
        return sorted(names)


def _positive_int(value: Any) -> Any:
    """``timeout_seconds``: a JSON integer >= 1; a bool, float or string is refused as the reference does."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(TIMEOUT_MESSAGE)
    return value


class SandboxSettingsIn(CompatModel):
    """``sandbox_settings`` of a Modal-era control plane; the resource fields and ``tunnelPorts`` are honoured."""

    cpuCores: float | None = Field(default=None, gt=0, le=256)
    memoryMib: int | None = Field(default=None, ge=16, le=1024 * 1024)
    #: Ports answered with a preview URL each, in ``tunnel_urls``.
    tunnelPorts: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(default=None, max_length=16)

    def resources(self) -> Resources:
        return Resources(cpu=self.cpuCores, memory_mb=self.memoryMib)


class SessionConfigIn(CompatModel):
    session_id: str = Field(min_length=1, max_length=256)
    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    provider: str = Field(default="anthropic", max_length=64)
    model: str = Field(default="claude-sonnet-4-6", max_length=128)
    branch: str | None = Field(default=None, min_length=1, max_length=255)
    opencode_session_id: str | None = Field(default=None, max_length=256)

    def session_fields(self) -> dict[str, Any]:
        """The fields a session config takes (the ignored ones left out)."""
        return {name: getattr(self, name) for name in SessionConfigIn.model_fields}


class _SessionSandbox(CompatModel):
    """Fields create-sandbox and restore-sandbox share."""

    sandbox_id: str | None = Field(default=None, pattern=SANDBOX_ID_PATTERN)
    control_plane_url: str = Field(min_length=1, max_length=2048)
    sandbox_auth_token: str = Field(min_length=1, max_length=4096)
    user_env_vars: dict[str, str] | None = None
    timeout_seconds: int | None = None
    sandbox_settings: SandboxSettingsIn | None = None

    _timeout = field_validator("timeout_seconds", mode="before")(_positive_int)

    def resources(self) -> Resources:
        return self.sandbox_settings.resources() if self.sandbox_settings is not None else Resources()

    def tunnel_ports(self) -> list[int]:
        ports = self.sandbox_settings.tunnelPorts if self.sandbox_settings is not None else None
        return sorted(set(ports or []))


class _CreateTarget(CompatModel):
    session_id: str = Field(min_length=1, max_length=256)
    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)


class CompatCreateSandbox(_SessionSandbox, _CreateTarget):
    """``POST /api/create-sandbox``."""

    snapshot_id: str | None = Field(default=None, max_length=128)
    opencode_session_id: str | None = Field(default=None, max_length=256)
    provider: str = Field(default="anthropic", max_length=64)
    model: str = Field(default="claude-sonnet-4-6", max_length=128)
    branch: str | None = Field(default=None, min_length=1, max_length=255)
    repo_image_id: str | None = Field(default=None, max_length=256)
    repo_image_sha: str | None = Field(default=None, max_length=64)
    base_sha: CommitSha | None = Field(default=None, description="the session starts from this commit")


class CompatSnapshotSandbox(CompatModel):
    """``POST /api/snapshot-sandbox``: the sandbox by its logical or its provider id."""

    sandbox_id: str = Field(min_length=1, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    reason: str = Field(default="manual", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class _RestoreTarget(CompatModel):
    # A base of its own, listed last, so its fields come first: a request missing
    # several is answered with the reference's first check, snapshot_image_id.
    snapshot_image_id: str = Field(min_length=1, max_length=128)


class CompatRestoreSandbox(_SessionSandbox, _RestoreTarget):
    """``POST /api/restore-sandbox``."""

    session_config: SessionConfigIn


class CompatWarmSandbox(CompatModel):
    """``POST /api/warm-sandbox``: keep a sandbox of the repository booted for the next session."""

    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    control_plane_url: str | None = Field(default=None, max_length=2048)


class CompatBuildRepoImage(CompatModel):
    """``POST /api/build-repo-image``: answered at once; the outcome arrives by callback."""

    repo_owner: str = Field(pattern=_NAME)
    repo_name: str = Field(pattern=_NAME)
    build_id: str = Field(pattern=BUILD_ID_PATTERN)
    default_branch: str = Field(default="main", min_length=1, max_length=255)
    callback_url: str = Field(min_length=1, max_length=2048)
    user_env_vars: dict[str, str] | None = None


class CompatDeleteProviderImage(CompatModel):
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def repo_image_data(image: RepoImageRecord, build: BuildRecord | None) -> dict[str, Any]:
    """``data`` of ``GET /api/snapshot``: the reference's ``Snapshot`` shape for a repository's latest repo image.

    ``id`` is what ``create-sandbox`` takes as ``repo_image_id``; the former
    names (``provider_image_id``, ``image_id``) are kept for older clients.
    """
    duration = None
    if build is not None and build.started_at is not None and build.finished_at is not None:
        duration = round((build.finished_at - build.started_at).total_seconds(), 3)
    return {
        "id": image.id,
        "repo_owner": image.repo_owner,
        "repo_name": image.repo_name,
        "base_sha": image.base_sha,
        "status": image.status,
        "created_at": _iso(image.created_at),
        "expires_at": None,
        "build_duration_seconds": duration,
        "error_message": None,
        "provider_image_id": image.id,
        "image_id": image.id,
        "branch": image.branch,
        "build_id": image.build_id,
    }


def ok(data: dict[str, Any] | None) -> dict[str, Any]:
    """The compat envelope of a success."""
    return {"success": True, "data": data}
