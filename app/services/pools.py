"""Warm pools: configuration, state, and the claim that hands a booted sandbox to a session.

A **claim** takes one ``warm`` member with a conditional update (``warm`` →
``running`` plus the session's fields, checked by row count; see
``app.storage.state.sandboxes``), then writes the :class:`SessionClaim` into the
sandbox (a temp file renamed into place, so the runtime never reads half a
claim). The runtime merges the claim's env over its own and starts the env
server and the bridge; clone and setup.sh were done while it was warm.

Ids: a claim with a ``sandbox_id`` binds that id to the sandbox, in the same
conditional update that takes the member: from then on every answer, lookup,
event and snapshot record uses it, and the claim tells the runtime, so the
bridge sends it too (``X-Sandbox-ID``, ``ready.sandboxId``, heartbeats): a
control plane checks the handshake against the id it asked for. The member's
former id stays its stable key, which its provider object is labelled with,
so the reconciler still matches the two, and lookups by the former id or the
provider object id still find it. Without a ``sandbox_id`` the member keeps
its own id.

Anything that stops a claim (no pool, no ready member, a failed hand-over)
falls back to a cold create, so a caller never sees the pool fail.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from app.errors import BadRequest, NotFound, SandboxControlError
from app.logging import get_logger
from app.providers.base import Provider, Resources
from app.schemas.common import RepoRef
from app.schemas.pools import PutPoolRequest
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.hosts import check_url_allowed
from app.services.leases import LeaseKeeper
from app.services.plain_pools import PlainClaims
from app.services.pool_members import POOL_LABEL, PoolMaintainer, abandon_claim
from app.services.sandboxes import SandboxService
from app.services.sessions import SessionLaunch, SessionService
from app.settings import Settings
from app.storage.state.pools import PoolRecord, PoolStore
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.times import utcnow
from sandbox_runtime import contract as c

#: How many times a claim re-reads the ready members after losing every race on them.
_CLAIM_ROUNDS = 3

log = get_logger("pools")


@dataclass(frozen=True)
class PoolState:
    """A pool's configuration and its live members (``PoolView.of`` counts them by state)."""

    pool: PoolRecord
    members: list[SandboxRecord]


def implicit_pool_name(repo_owner: str, repo_name: str) -> str:
    """The pool ``POST /api/warm-sandbox`` makes for a repository."""
    return f"auto-{repo_owner}-{repo_name}"[:128]


class PoolService:
    """Pool configuration and state, warm-ups, and warm-first session launches."""

    def __init__(
        self,
        settings: Settings,
        pools: PoolStore,
        members: SandboxStore,
        sandboxes: SandboxService,
        sessions: SessionService,
        provider: Provider,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.member_records = members
        self.sandboxes = sandboxes
        self.sessions = sessions
        self.provider = provider
        self.maintainer = PoolMaintainer(settings, pools, members, sandboxes, sessions, provider, leases)
        self.plain = PlainClaims(members, sandboxes, provider)

    # -- configuration and state ---------------------------------------------

    async def put(self, name: str, request: PutPoolRequest, *, implicit: bool = False) -> PoolState:
        """Create or reconfigure a pool; the maintainer brings it to target right away."""
        repo = request.repo
        if request.repo_image_id is not None and repo is not None:
            image = await self.sessions.repo_images.get(request.repo_image_id)
            if (image.repo_owner, image.repo_name) != (repo.owner, repo.name):
                raise BadRequest(
                    f"repo image {image.id!r} holds {image.repo_owner}/{image.repo_name}", field="repo_image_id"
                )
        if repo is None:
            self.sandboxes.check_spec(request.resources, request.network)
        now = utcnow()
        record = await self.pools.put(
            PoolRecord(
                name=name,
                repo_owner=repo.owner if repo is not None else "",
                repo_name=repo.name if repo is not None else "",
                branch=repo.branch if repo is not None else None,
                image=request.image,
                repo_image_id=request.repo_image_id,
                target=request.target,
                max_age_seconds=request.max_age_seconds,
                implicit=implicit,
                created_at=now,
                updated_at=now,
                kind="session" if repo is not None else "plain",
                resources=request.resources.model_dump(exclude_none=True),
                env=dict(request.env),
                labels=dict(request.labels),
                network=request.network,
            )
        )
        self.maintainer.wake()
        return await self.state(record)

    async def get(self, name: str) -> PoolRecord:
        record = await self.pools.get(name)
        if record is None:
            raise NotFound(f"pool {name!r} not found", pool=name)
        return record

    async def state(self, pool: PoolRecord) -> PoolState:
        """The pool with its live members."""
        return PoolState(pool, await self.maintainer.members(pool.name))

    async def list(self) -> list[PoolState]:
        return [await self.state(pool) for pool in await self.pools.list()]

    async def delete(self, name: str) -> int:
        """Forget the pool and delete its unclaimed members; returns how many were deleted."""
        await self.get(name)
        await self.pools.delete(name)
        members = [m for m in await self.maintainer.members(name) if not m.claimed]
        retired = await asyncio.gather(
            *(self.maintainer.retire(m.id, "pool deleted", from_statuses=("warm", "running", "failed", "stopped"))
              for m in members)
        )  # fmt: skip
        # Members still being created are retired by the pass that created them.
        return sum(retired)

    # -- Open-Inspect's warm-sandbox -----------------------------------------

    async def warm_repo(self, repo_owner: str, repo_name: str, control_plane_url: str | None) -> SandboxRecord:
        """Make sure one sandbox of the repository is (being) warmed; returns it.

        Uses a pool of the repository on the base image when one exists (raising
        its target to 1 if it was 0), else creates the implicit pool.
        """
        if control_plane_url is not None:
            check_url_allowed(control_plane_url, self.settings.allowed_control_plane_hosts, field="control_plane_url")
        pools = [p for p in await self.pools.list(repo_owner=repo_owner, repo_name=repo_name) if p.image is None]
        pool = max(pools, key=lambda p: p.target, default=None)
        if pool is None or pool.target < 1:
            request = PutPoolRequest(
                repo=RepoRef(owner=repo_owner, name=repo_name, branch=pool.branch if pool else None),
                target=1,
                max_age_seconds=pool.max_age_seconds if pool else self.settings.pool_default_max_age_seconds,
            )
            name = pool.name if pool else implicit_pool_name(repo_owner, repo_name)
            await self.pools.put(
                PoolRecord(
                    name=name, repo_owner=repo_owner, repo_name=repo_name, image=None,
                    branch=pool.branch if pool else None,
                    target=1, max_age_seconds=request.max_age_seconds, implicit=pool.implicit if pool else True,
                    created_at=pool.created_at if pool else utcnow(), updated_at=utcnow(),
                )
            )  # fmt: skip
            pool = await self.get(name)
        member = await self.maintainer.ensure_member(pool)
        self.maintainer.wake()
        return member

    # -- claims --------------------------------------------------------------

    async def launch_plain(self, request: CreateSandboxRequest) -> SandboxRecord:
        """``from_pool`` without a session: a ready member of that plain pool, else created cold."""
        assert request.from_pool is not None
        record, claimed = await self.plain.launch(await self.get(request.from_pool), request)
        if claimed:
            self.maintainer.wake()  # refill behind the claim
        return record

    async def launch(self, launch: SessionLaunch, *, pool_name: str | None = None) -> SandboxRecord:
        """A session sandbox: a claimed warm member when one is ready, else a cold create.

        ``pool_name`` (``from_pool``) claims from that pool only; its repository
        must be the session's. Without it, any pool of the session's repository
        and image serves. Snapshot restores and custom resources or networks are
        always cold: a warm member was made without them.
        """
        self.sessions.check(launch)
        pool = await self._pool_for(launch, pool_name)
        if pool is not None:
            record = await self.claim(pool, launch)
            if record is not None:
                return record
        return await self.sessions.launch(launch)

    async def session_pool(self, name: str) -> PoolRecord:
        """The pool ``name`` for a session claim; a plain pool is the caller's mistake."""
        pool = await self.get(name)
        if pool.plain:
            raise BadRequest(f"pool {name!r} holds plain sandboxes: claim it without session", field="from_pool")
        return pool

    async def _pool_for(self, launch: SessionLaunch, pool_name: str | None) -> PoolRecord | None:
        session = launch.session
        if pool_name is not None:
            pool = await self.session_pool(pool_name)
            if (pool.repo_owner, pool.repo_name) != (session.repo_owner, session.repo_name):
                raise BadRequest(f"pool {pool_name!r} serves {pool.repo_owner}/{pool.repo_name}", field="from_pool")
            if launch.image is not None and launch.image != pool.image:
                raise BadRequest(f"pool {pool_name!r} does not use image {launch.image!r}", field="image")
            return None if launch.snapshot_id or launch.repo_image is not None else pool
        if launch.snapshot_id or launch.resources != Resources():
            return None
        pools = await self.pools.list(repo_owner=session.repo_owner, repo_name=session.repo_name)
        wanted_image = launch.repo_image.id if launch.repo_image is not None else None
        matching = [p for p in pools if p.image == launch.image and p.repo_image_id == wanted_image]
        return max(matching, key=lambda p: p.target, default=None)

    async def claim(self, pool: PoolRecord, launch: SessionLaunch) -> SandboxRecord | None:
        """Take one ready member of ``pool`` for ``launch``; None when there is none to take."""
        if launch.sandbox_id:
            await self.sandboxes.check_id_free(launch.sandbox_id)
        won = await self._take(pool, launch)
        if won is None:
            log.info("pool.empty", pool=pool.name, session_id=launch.session.session_id)
            return None
        self.maintainer.wake()  # refill behind the claim
        try:
            await self._hand_over(won, launch)
        except (SandboxControlError, OSError) as exc:
            await abandon_claim(self.member_records, self.sandboxes, pool.name, won.id, exc)
            return None
        await self.member_records.add_event(won.id, "claimed", pool=pool.name, session_id=launch.session.session_id)
        log.info("pool.claimed", pool=pool.name, sandbox_id=won.id, session_id=launch.session.session_id)
        return await self.sandboxes.get(won.id)

    async def _take(self, pool: PoolRecord, launch: SessionLaunch) -> SandboxRecord | None:
        session = launch.session
        ttl = launch.ttl_seconds or self.settings.default_ttl_seconds
        if ttl and ttl > self.settings.max_ttl_seconds:
            raise BadRequest(f"ttl_seconds exceeds the maximum of {self.settings.max_ttl_seconds}", field="ttl_seconds")
        labels = dict(launch.labels)
        for _round in range(_CLAIM_ROUNDS):
            ready = await self.member_records.list({POOL_LABEL: pool.name}, statuses=["warm"], limit=100)
            if not ready:
                return None
            # Concurrent claimers start from different members instead of all racing for the first.
            random.shuffle(ready)
            for member in ready:
                if await self.member_records.transition(
                    member.id,
                    ["warm"],
                    "running",
                    session_id=session.session_id,
                    claimed_at=utcnow(),
                    ttl_seconds=ttl,
                    expires_at=utcnow() + timedelta(seconds=ttl) if ttl else None,
                    add_labels=labels,
                    new_id=launch.sandbox_id,
                ):
                    return await self.sandboxes.get(launch.sandbox_id or member.id)
        return None

    async def _hand_over(self, member: SandboxRecord, launch: SessionLaunch) -> None:
        """Write the claim file atomically: a temp file, then ``mv`` onto the path the runtime polls."""
        ref = member.provider_object_id
        if ref is None:
            raise SandboxControlError(f"sandbox {member.id!r} has no provider object")
        env = {
            **launch.user_env,
            c.SANDBOX_ID: member.id,
            c.CONTROL_PLANE_URL: launch.control_plane_url,
            c.SANDBOX_AUTH_TOKEN: launch.sandbox_auth_token,
        }
        clone_token = await self.sessions.clone_token()  # fresh: the one from boot may have expired
        if clone_token is not None:
            env[c.VCS_CLONE_TOKEN] = clone_token
        body = c.SessionClaim(session_config=launch.session, env=env).model_dump_json().encode()
        partial = f"{c.DEFAULT_CLAIM_FILE}.{secrets.token_hex(4)}.tmp"

        async def chunks() -> AsyncIterator[bytes]:
            yield body

        await self.provider.write_file(ref, partial, chunks())
        moved = await self.provider.exec(ref, ["mv", "-f", "--", partial, c.DEFAULT_CLAIM_FILE], timeout=30)
        if moved.exit_code != 0:
            raise SandboxControlError(f"cannot place the claim: {moved.stderr.decode(errors='replace').strip()}")
