"""Snapshots: take, view, restore."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from app.schemas.common import StrictModel
from app.schemas.sandboxes import CreateSandboxRequest
from app.storage.state.snapshots import SnapshotRecord


class CreateSnapshotRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/snapshots``."""

    reason: str = Field(default="manual", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    session_id: str | None = Field(default=None, min_length=1, max_length=256)


class SnapshotView(StrictModel):
    """A snapshot as the API shows it."""

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

    @classmethod
    def of(cls, record: SnapshotRecord) -> SnapshotView:
        repo = f"{record.repo_owner}/{record.repo_name}" if record.repo_owner and record.repo_name else None
        return cls(
            id=record.id,
            sandbox_id=record.sandbox_id,
            session_id=record.session_id,
            provider=record.provider,
            status=record.status,
            reason=record.reason,
            paths=record.paths,
            size_bytes=record.size_bytes,
            raw_size=record.raw_size,
            file_count=record.file_count,
            sha256=record.sha256,
            git_head=record.git_head,
            repo=repo,
            error=record.error,
            created_at=record.created_at,
        )


class SnapshotList(StrictModel):
    snapshots: list[SnapshotView]


class RestoreRequest(CreateSandboxRequest):
    """``POST /v1/snapshots/{id}/restore``: any create field (labels, env, resources, command, ...)."""
