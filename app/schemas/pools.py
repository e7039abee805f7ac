"""``/v1/pools``: warm pool configuration and state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import Field, model_validator

from app.schemas.common import RepoRef, StrictModel
from app.storage.state.pools import PoolRecord
from app.storage.state.sandboxes import SandboxRecord

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

    @classmethod
    def of(cls, pool: PoolRecord, members: Sequence[SandboxRecord]) -> PoolView:
        """The pool with its live ``members`` counted by state."""
        unclaimed = [m for m in members if m.session_id is None]
        return cls(
            name=pool.name,
            repo=RepoRef(owner=pool.repo_owner, name=pool.repo_name, branch=pool.branch),
            image=pool.image,
            repo_image_id=pool.repo_image_id,
            target=pool.target,
            max_age_seconds=pool.max_age_seconds,
            implicit=pool.implicit,
            ready=sum(m.status == "warm" for m in unclaimed),
            creating=sum(m.status in ("creating", "running") for m in unclaimed),
            claimed=sum(m.session_id is not None for m in members),
            created_at=pool.created_at,
            updated_at=pool.updated_at,
        )


class PoolList(StrictModel):
    pools: list[PoolView]


class PoolDrained(StrictModel):
    """``DELETE /v1/pools/{name}``: the pool is gone; its unclaimed members were deleted."""

    name: str
    deleted_members: int
