"""Request and response models shared by the routes and the services.

One model pair per operation, ``extra="forbid"`` everywhere: a misspelt field
is a 422, never silently ignored.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.providers.base import Resources

#: Label keys we set ourselves; callers may read but not set them.
RESERVED_LABEL_PREFIX = "sandbox-control."
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_LABELS = 64
MAX_ENV = 256


def validate_labels(labels: dict[str, str], *, allow_reserved: bool = False) -> dict[str, str]:
    """Label keys like Kubernetes', values printable and ≤ 256 chars; at most 64."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"invalid label key {key!r}: letters, digits and ._/- only, 1-64 chars")
        if key.startswith(RESERVED_LABEL_PREFIX) and not allow_reserved:
            raise ValueError(f"label prefix {RESERVED_LABEL_PREFIX!r} is reserved")
        if len(value) > 256 or not value.isprintable():
            raise ValueError(f"invalid value for label {key!r}: printable text, at most 256 chars")
    return labels


def validate_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV:
        raise ValueError(f"at most {MAX_ENV} environment variables")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\x00" in value or len(value) > 32 * 1024:
            raise ValueError(f"invalid value for environment variable {name!r}")
    return env


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


SandboxId = Annotated[str, Field(pattern=_SANDBOX_ID.pattern, description="letters, digits, ._- (max 128)")]


_REPO_PART = r"^[A-Za-z0-9_.-]{1,100}$"


class RepoRef(StrictModel):
    """The repository a session sandbox clones."""

    owner: str = Field(pattern=_REPO_PART)
    name: str = Field(pattern=_REPO_PART)
    branch: str | None = Field(default=None, min_length=1, max_length=255)


class SessionRef(StrictModel):
    """The control-plane session a sandbox serves (its bridge connects there)."""

    session_id: str = Field(min_length=1, max_length=256)
    control_plane_url: str = Field(min_length=1, max_length=2048)
    sandbox_auth_token: str = Field(min_length=1, max_length=4096)
    provider: str = Field(default="anthropic", max_length=64)
    model: str = Field(default="claude-sonnet-4-6", max_length=128)
    opencode_session_id: str | None = Field(default=None, max_length=256)


class CreateSandboxRequest(StrictModel):
    """``POST /v1/sandboxes``.

    With ``repo`` and ``session`` the sandbox runs the in-sandbox runtime
    (clone, env server, bridge) and ``command`` must be absent;
    ``from_snapshot`` starts it from a snapshot's files.
    """

    sandbox_id: SandboxId | None = Field(default=None, description="logical id; generated when absent")
    image: str | None = Field(default=None, max_length=512)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    ttl_seconds: int | None = Field(default=None, ge=1)
    network: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    command: list[Annotated[str, Field(max_length=8192)]] | None = Field(
        default=None, min_length=1, max_length=256, description="long-running entry command"
    )
    repo: RepoRef | None = None
    session: SessionRef | None = None
    from_snapshot: str | None = Field(default=None, min_length=1, max_length=128)
    from_pool: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_env(value)

    @model_validator(mode="after")
    def _pool_needs_session(self) -> CreateSandboxRequest:
        # A warm member is handed to a session; without one there is nothing to hand it to.
        if self.from_pool is not None and self.session is None:
            raise ValueError("from_pool needs session (the warm sandbox is handed to that session)")
        if self.from_pool is not None and self.from_snapshot is not None:
            raise ValueError("from_pool and from_snapshot exclude each other")
        return self


class SandboxView(StrictModel):
    """A sandbox as the API shows it."""

    id: str
    provider: str
    provider_object_id: str | None
    status: str
    image: str | None
    labels: dict[str, str]
    resources: dict[str, Any]
    network: str | None = None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    session_id: str | None = None
    repo: str | None = None
    error: str | None = None


class SandboxList(StrictModel):
    sandboxes: list[SandboxView]


class ExecRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/exec``: argv list, or a shell string run by ``/bin/sh -c``."""

    command: list[Annotated[str, Field(max_length=65536)]] | Annotated[str, Field(min_length=1, max_length=65536)]
    timeout_seconds: float | None = Field(default=None, gt=0)
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    stdin: str | None = Field(default=None, max_length=8 * 1024 * 1024)

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_env(value)

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or not value[0]):
            raise ValueError("command must be a non-empty argv list or a shell string")
        if any("\x00" in part for part in ([value] if isinstance(value, str) else value)):
            raise ValueError("command must not contain NUL bytes")
        return value


class ExecResponse(StrictModel):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    duration_ms: int


class EventView(StrictModel):
    at: datetime
    kind: str
    detail: dict[str, Any]


class EventList(StrictModel):
    events: list[EventView]


class CreateSnapshotRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/snapshots``."""

    reason: str = Field(default="manual", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    session_id: str | None = Field(default=None, min_length=1, max_length=256)


class SnapshotView(StrictModel):
    id: str
    sandbox_id: str
    session_id: str | None
    provider: str
    status: str
    reason: str | None
    paths: list[str] | None
    size_bytes: int | None
    raw_size: int | None
    file_count: int | None
    sha256: str | None
    git_head: str | None
    repo: str | None
    error: str | None
    created_at: datetime


class SnapshotList(StrictModel):
    snapshots: list[SnapshotView]


class RestoreRequest(CreateSandboxRequest):
    """``POST /v1/snapshots/{id}/restore``: any create field (labels, env, resources, command, ...)."""


MAX_POOL_TARGET = 50


class PutPoolRequest(StrictModel):
    """``PUT /v1/pools/{name}``: keep ``target`` booted sandboxes of ``repo`` ready to claim."""

    repo: RepoRef
    image: str | None = Field(default=None, max_length=512, description="default: the service's base image")
    repo_image_id: str | None = Field(
        default=None, pattern=r"^rimg_[0-9a-f]{16}$", description="members boot from this repo image instead"
    )
    target: int = Field(ge=0, le=MAX_POOL_TARGET, description="ready members to keep (0 drains the pool)")
    max_age_seconds: int = Field(
        default=3600, ge=1, le=7 * 24 * 3600, description="unclaimed members older than this are replaced"
    )

    @model_validator(mode="after")
    def _one_image(self) -> PutPoolRequest:
        if self.image is not None and self.repo_image_id is not None:
            raise ValueError("image and repo_image_id exclude each other")
        return self


class PoolView(StrictModel):
    """A pool's configuration and its members by state.

    ``ready``: booted (cloned, setup.sh done) and waiting for a claim;
    ``creating``: being created or still booting; ``claimed``: handed to a
    session and still alive.
    """

    name: str
    repo: RepoRef
    image: str | None
    repo_image_id: str | None = None
    target: int
    max_age_seconds: int
    implicit: bool
    ready: int
    creating: int
    claimed: int
    created_at: datetime
    updated_at: datetime


class PoolList(StrictModel):
    pools: list[PoolView]


class PoolDrained(StrictModel):
    """``DELETE /v1/pools/{name}``: the pool is gone; its unclaimed members were deleted."""

    name: str
    deleted_members: int
