"""``/v1/pools``: warm pool configuration and state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import Field, model_validator

from app.providers.base import Resources
from app.schemas.common import EnvAndLabels, RepoRef, StrictModel
from app.storage.state.pools import PoolRecord
from app.storage.state.sandboxes import SandboxRecord

MAX_POOL_TARGET = 50


class PutPoolRequest(EnvAndLabels):
    """``PUT /v1/pools/{name}``: keep ``target`` sandboxes ready to claim.

    With ``repo``: session sandboxes of that repository, booted (cloned, setup.sh run)
    and waiting for a session. Without: plain sandboxes of ``image``, ``resources``,
    ``env``, ``labels`` and ``network``, claimed by ``POST /v1/sandboxes {"from_pool"}``.
    """

    repo: RepoRef | None = None
    image: str | None = Field(default=None, max_length=512, description="default: the service's base image")
    resources: Resources = Field(default_factory=Resources, description="plain pools: each member's resources")
    env: dict[str, str] = Field(
        default_factory=dict, description="plain pools: each member's env (stored with the pool)"
    )
    labels: dict[str, str] = Field(default_factory=dict, description="plain pools: each member's labels")
    network: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    repo_image_id: str | None = Field(
        default=None, pattern=r"^rimg_[0-9a-f]{16}$", description="members boot from this repo image instead"
    )
    target: int = Field(ge=0, le=MAX_POOL_TARGET, description="ready members to keep (0 drains the pool)")
    max_age_seconds: int = Field(
        default=3600, ge=1, le=7 * 24 * 3600, description="unclaimed members older than this are replaced"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PutPoolRequest:
        if self.image is not None and self.repo_image_id is not None:
            raise ValueError("image and repo_image_id exclude each other")
        plain_fields = self.resources != Resources() or self.env or self.labels or self.network
        if self.repo is not None and plain_fields:
            raise ValueError("resources, env, labels and network are for plain pools (no repo)")
        if self.repo is None and self.repo_image_id is not None:
            raise ValueError("repo_image_id needs repo")
        return self


class PoolView(StrictModel):
    """A pool's configuration and its members by state.

    ``ready``: booted (cloned, setup.sh done) and waiting for a claim;
    ``creating``: being created or still booting; ``claimed``: handed to a
    session and still alive.
    """

    name: str
    #: ``session`` (booted repository sandboxes) or ``plain``.
    kind: str
    repo: RepoRef | None
    image: str | None
    resources: dict[str, Any] = Field(default_factory=dict)
    #: Names of the members' env vars (values are not shown).
    env: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
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
        unclaimed = [m for m in members if not m.claimed]
        return cls(
            name=pool.name,
            kind=pool.kind,
            repo=None if pool.plain else RepoRef(owner=pool.repo_owner, name=pool.repo_name, branch=pool.branch),
            image=pool.image,
            resources=pool.resources,
            env=sorted(pool.env),
            labels=pool.labels,
            network=pool.network,
            repo_image_id=pool.repo_image_id,
            target=pool.target,
            max_age_seconds=pool.max_age_seconds,
            implicit=pool.implicit,
            ready=sum(m.status == "warm" for m in unclaimed),
            creating=sum(m.status in ("creating", "running") for m in unclaimed),
            claimed=sum(m.claimed for m in members),
            created_at=pool.created_at,
            updated_at=pool.updated_at,
        )


class PoolList(StrictModel):
    pools: list[PoolView]


class PoolDrained(StrictModel):
    """``DELETE /v1/pools/{name}``: the pool is gone; its unclaimed members were deleted."""

    name: str
    deleted_members: int
