"""``/v1/builds``: repo image builds."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from app.schemas.common import RepoRef, StrictModel
from app.storage.state.builds import BuildRecord

BUILD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class CreateBuildRequest(StrictModel):
    """``POST /v1/builds``: clone ``repo`` at its branch, run setup.sh, save a repo image."""

    build_id: str = Field(pattern=BUILD_ID_PATTERN, description="the caller's id; the same id twice is one build")
    repo: RepoRef
    callback_url: str | None = Field(default=None, min_length=1, max_length=2048)
    env: dict[str, str] = Field(default_factory=dict, description="env vars of setup.sh (masked in the log)")


class BuildView(StrictModel):
    """A build's state; ``provider_image_id`` is set once it is ``ready``."""

    id: str
    status: str
    repo_owner: str
    repo_name: str
    branch: str | None
    sandbox_id: str | None
    provider_image_id: str | None
    base_sha: str | None
    error: str | None
    log_bytes: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, record: BuildRecord) -> BuildView:
        return cls(
            id=record.id,
            status=record.status,
            repo_owner=record.repo_owner,
            repo_name=record.repo_name,
            branch=record.branch,
            sandbox_id=record.sandbox_id,
            provider_image_id=record.repo_image_id if record.status == "ready" else None,
            base_sha=record.base_sha,
            error=record.error,
            log_bytes=record.log_bytes,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
        )
