"""Shapes and checks shared by every resource's models."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from sandbox_runtime.contract import COMMIT_SHA_PATTERN

#: Label keys we set ourselves; callers may read but not set them.
RESERVED_LABEL_PREFIX = "sandbox-control."
SANDBOX_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
REPO_PART_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_LABELS = 64
MAX_ENV = 256
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


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
    """Environment names as POSIX shells take them; values without NUL, at most 32 KiB; at most 256."""
    if len(env) > MAX_ENV:
        raise ValueError(f"at most {MAX_ENV} environment variables")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\x00" in value or len(value) > 32 * 1024:
            raise ValueError(f"invalid value for environment variable {name!r}")
    return env


class StrictModel(BaseModel):
    """A model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")


SandboxId = Annotated[str, Field(pattern=SANDBOX_ID_PATTERN, description="letters, digits, ._- (max 128)")]

#: A commit by its hex object name (7-64 digits, any case; stored lower case).
CommitSha = Annotated[
    str,
    BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
    Field(pattern=COMMIT_SHA_PATTERN, description="hex commit id"),
]


class WithEnv(StrictModel):
    """A request carrying ``env``: checked the one way everywhere."""

    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_env(value)


class EnvAndLabels(WithEnv):
    """A request carrying ``env`` and ``labels``."""

    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)


class RepoRef(StrictModel):
    """The repository a session sandbox clones."""

    owner: str = Field(pattern=REPO_PART_PATTERN)
    name: str = Field(pattern=REPO_PART_PATTERN)
    branch: str | None = Field(default=None, min_length=1, max_length=255)


class ErrorBody(StrictModel):
    """Every error answer: a readable message, a machine code, and details when there are any."""

    success: Literal[False] = False
    error: str
    code: str = Field(description="machine code, e.g. sandbox_not_found, validation_error")
    details: dict[str, Any] | None = None
