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
    #: Logical size: bytes of the snapshot's (uncompressed) tar stream.
    size_bytes: int | None = Field(description="Logical size: bytes of the uncompressed archive")
    #: Bytes this snapshot added to the bucket (v2: its new chunks; v1: its whole blob).
    stored_bytes: int | None = Field(description="Bytes this snapshot added to the bucket (new chunks only in v2)")
    #: Share of the snapshot's compressed bytes that were already stored (0 to 1; v1: 0).
    dedup_ratio: float | None = Field(
        description="Share of the snapshot's compressed bytes already stored before it (0: none reused, 1: all)"
    )
    #: Archive format: 1 (one blob) or 2 (deduplicated chunks).
    format_version: int | None
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
            size_bytes=record.raw_size,
            stored_bytes=record.stored_bytes,
            dedup_ratio=_dedup_ratio(record),
            format_version=record.format_version or (1 if record.status == "ready" else None),
            raw_size=record.raw_size,
            file_count=record.file_count,
            sha256=record.sha256,
            git_head=record.git_head,
            repo=repo,
            error=record.error,
            created_at=record.created_at,
        )


def _dedup_ratio(record: SnapshotRecord) -> float | None:
    compressed, stored = record.size_bytes, record.stored_bytes
    if compressed is None or stored is None:
        return None
    return round(1 - stored / compressed, 4) if compressed else 1.0


class SnapshotList(StrictModel):
    snapshots: list[SnapshotView]


class RestoreRequest(CreateSandboxRequest):
    """``POST /v1/snapshots/{id}/restore``: any create field (labels, env, resources, command, ...)."""
