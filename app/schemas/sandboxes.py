"""``/v1/sandboxes``: create, view, exec, events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from app.providers.base import ExecResult, Resources
from app.schemas.common import CommitSha, EnvAndLabels, RepoRef, SandboxId, StrictModel, WithEnv
from app.storage.state.sandboxes import SandboxRecord


class SessionRef(StrictModel):
    """The control-plane session a sandbox serves (its bridge connects there)."""

    session_id: str = Field(min_length=1, max_length=256)
    control_plane_url: str = Field(min_length=1, max_length=2048)
    sandbox_auth_token: str = Field(min_length=1, max_length=4096)
    provider: str = Field(default="anthropic", max_length=64)
    model: str = Field(default="claude-sonnet-4-6", max_length=128)
    opencode_session_id: str | None = Field(default=None, max_length=256)
    base_sha: CommitSha | None = Field(default=None, description="the session starts from this commit")


class CreateSandboxRequest(EnvAndLabels):
    """``POST /v1/sandboxes``.

    With ``repo`` and ``session`` the sandbox runs the in-sandbox runtime
    (clone, env server, bridge) and ``command`` must be absent;
    ``from_snapshot`` starts it from a snapshot's files; ``from_pool`` claims a
    ready member of a pool (a session pool with ``session``, else a plain pool).
    """

    sandbox_id: SandboxId | None = Field(default=None, description="logical id; generated when absent")
    image: str | None = Field(default=None, max_length=512)
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

    @model_validator(mode="after")
    def _pool_and_snapshot(self) -> CreateSandboxRequest:
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

    @classmethod
    def of(cls, record: SandboxRecord) -> SandboxView:
        repo = f"{record.repo_owner}/{record.repo_name}" if record.repo_owner and record.repo_name else None
        return cls(
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


class SandboxList(StrictModel):
    sandboxes: list[SandboxView]


#: Largest ``stdin`` of one exec, in UTF-8 bytes.
MAX_STDIN_BYTES = 8 * 1024 * 1024
#: How much larger than its text a JSON string can be: a control character is sent as ``\u00XX``.
JSON_ESCAPE_FACTOR = 6


class CommandRequest(WithEnv):
    """A command to run: argv list, or a shell string run by ``/bin/sh -c``; its cwd and env."""

    command: list[Annotated[str, Field(max_length=65536)]] | Annotated[str, Field(min_length=1, max_length=65536)]
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or not value[0]):
            raise ValueError("command must be a non-empty argv list or a shell string")
        if any("\x00" in part for part in ([value] if isinstance(value, str) else value)):
            raise ValueError("command must not contain NUL bytes")
        return value


class ExecRequest(CommandRequest):
    """``POST /v1/sandboxes/{id}/exec``: argv list, or a shell string run by ``/bin/sh -c``."""

    timeout_seconds: float | None = Field(default=None, gt=0)
    stdin: str | None = Field(default=None, description=f"at most {MAX_STDIN_BYTES} bytes (UTF-8)")
    stream: bool = Field(
        default=False,
        description="answer with server-sent events as the output is produced (as `Accept: text/event-stream`)",
    )

    @field_validator("stdin")
    @classmethod
    def _stdin_size(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_STDIN_BYTES:
            raise ValueError(f"stdin must be at most {MAX_STDIN_BYTES} bytes (upload larger input as a file)")
        return value


class ExecResponse(StrictModel):
    """A command's outcome: a non-zero exit or a timeout is a result, not an error."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    duration_ms: int

    @classmethod
    def of(cls, result: ExecResult) -> ExecResponse:
        return cls(
            exit_code=result.exit_code,
            stdout=result.stdout.decode(errors="replace"),
            stderr=result.stderr.decode(errors="replace"),
            timed_out=result.timed_out,
            truncated=result.truncated,
            duration_ms=result.duration_ms,
        )


class EventView(StrictModel):
    at: datetime
    kind: str
    detail: dict[str, Any]


class EventList(StrictModel):
    events: list[EventView]
