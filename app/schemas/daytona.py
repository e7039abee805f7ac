"""Request bodies of the Daytona-compatible API, in Daytona's camelCase wire form.

Unknown fields are ignored rather than refused (unlike ``/v1``): the SDK sends
every field of its generated models, most of them null. Fields this service
cannot honour are declared so that a non-default value is refused by name
(``volumes``, ``kvm``, ...), never silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from app.errors import BadRequest
from app.schemas.sandboxes import ExecRequest


def bad_request(exc: ValidationError) -> BadRequest:
    """Daytona's 400 for a value that fails one of our models, naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return BadRequest(f"{field}: {first['msg']}", field=field)


def exec_request(**fields: Any) -> ExecRequest:
    """Our exec request for a Daytona call; a value out of shape (a NUL, an env name) is a named 400."""
    try:
        return ExecRequest(**fields)
    except ValidationError as exc:
        raise bad_request(exc) from None


class DaytonaModel(BaseModel):
    """camelCase on the wire, unknown fields ignored (the SDK sends many nulls)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class BuildInfo(DaytonaModel):
    dockerfile_content: str = Field(max_length=65536)
    context_hashes: list[str] | None = None


class CreateSandbox(DaytonaModel):
    """``POST /sandbox``. Intervals are minutes, as Daytona counts them."""

    name: str | None = Field(default=None, max_length=128)
    snapshot: str | None = Field(default=None, max_length=512)
    user: str | None = Field(default=None, max_length=64)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    public: bool | None = None
    network_block_all: bool | None = None
    network_allow_list: str | None = None
    domain_allow_list: str | None = None
    target: str | None = None
    cpu: int | None = Field(default=None, ge=1, le=256)
    gpu: int | None = Field(default=None, ge=0, le=64)
    memory: int | None = Field(default=None, ge=1, le=1024, description="GiB")
    disk: int | None = Field(default=None, ge=1, le=65536, description="GiB")
    auto_stop_interval: int | None = None
    auto_pause_interval: int | None = None
    auto_archive_interval: int | None = None
    auto_delete_interval: int | None = None
    ttl_minutes: int | None = Field(default=None, ge=0)
    volumes: list[dict[str, Any]] | None = None
    secrets: list[dict[str, str]] | None = None
    kvm: bool | None = None
    build_info: BuildInfo | None = None


class SandboxLabels(DaytonaModel):
    """``PUT /sandbox/{id}/labels``: the new, complete set."""

    labels: dict[str, str]


class CreateSnapshot(DaytonaModel):
    """``POST /snapshots``."""

    name: str = Field(min_length=1, max_length=256)
    image_name: str | None = None
    build_info: BuildInfo | None = None


class ExecuteRequest(DaytonaModel):
    """Toolbox ``POST /process/execute``: a shell command line; timeout in seconds."""

    command: str = Field(min_length=1, max_length=65536)
    cwd: str | None = Field(default=None, max_length=4096)
    envs: dict[str, str] | None = None
    timeout: int | None = Field(default=None, ge=0)


class CodeRunRequest(DaytonaModel):
    """Toolbox ``POST /process/code-run``."""

    code: str = Field(max_length=1 << 20)
    language: str = Field(default="python", max_length=32)
    argv: list[str] | None = None
    envs: dict[str, str] | None = None
    timeout: int | None = Field(default=None, ge=0)


class CreateSessionRequest(DaytonaModel):
    session_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SessionInputRequest(DaytonaModel):
    """Toolbox ``POST /process/session/{id}/command/{cmd}/input``: text for the command's stdin."""

    data: str = Field(max_length=1 << 20)


class SessionExecuteRequest(DaytonaModel):
    """Toolbox ``POST /process/session/{id}/exec``; ``async`` is the older name of ``runAsync``."""

    command: str = Field(min_length=1, max_length=65536)
    run_async: bool | None = None
    legacy_async: bool | None = Field(default=None, alias="async")
    suppress_input_echo: bool | None = None

    @property
    def in_background(self) -> bool:
        return bool(self.run_async or self.legacy_async)


class FilesDownloadRequest(DaytonaModel):
    paths: list[str] = Field(min_length=1, max_length=1000)


class GitCloneRequest(BaseModel):
    """Toolbox ``POST /git/clone`` (snake_case on the wire, as the daemon has it)."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1, max_length=4096)
    path: str = Field(min_length=1, max_length=4096)
    branch: str | None = Field(default=None, max_length=256)
    commit_id: str | None = Field(default=None, max_length=64)
    username: str | None = None
    password: str | None = None
    depth: int | None = Field(default=None, ge=1)
