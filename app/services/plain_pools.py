"""Plain pools: sandboxes of an image, resources, env, labels and network, created ahead and claimed per call.

For RL harnesses and code tools that make one plain sandbox per rollout or
call. ``POST /v1/sandboxes {"from_pool": name, ...}`` (no ``session``) takes a
ready member in one conditional update (it gets the caller's ``sandbox_id``,
labels and TTL there), or creates the sandbox cold from the pool's
configuration when none is ready. What a claim adds to the environment is
written into the sandbox (``CLAIM_ENV_FILE``, mode 0600, outside the snapshot
paths) and loaded by every command run there, so the values never reach the
state store; their names are recorded (``claim_env``). A claimed sandbox then
behaves as a created one.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Mapping
from datetime import timedelta

from app.errors import BadRequest, SandboxControlError
from app.logging import get_logger
from app.providers.base import Provider, Resources
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.pool_members import POOL_LABEL, abandon_claim
from app.services.sandboxes import CLAIM_ENV_FILE, SandboxService
from app.storage.state.pools import PoolRecord
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.times import utcnow

log = get_logger("pools")

_CLAIM_ROUNDS = 3
_WRITE_PRIVATE = ["/bin/sh", "-c", 'umask 077 && mkdir -p "${1%/*}" && cat > "$1"', "sh", CLAIM_ENV_FILE]


def env_file(env: Mapping[str, str]) -> bytes:
    """``export NAME='value'`` lines a POSIX shell sources (values quoted, never interpreted)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items())).encode()


def cold_request(pool: PoolRecord, request: CreateSandboxRequest) -> CreateSandboxRequest:
    """The create a claim falls back to: the pool's configuration, the caller's env and labels on top."""
    return CreateSandboxRequest(
        sandbox_id=request.sandbox_id,
        image=pool.image,
        env={**pool.env, **request.env},
        labels={**pool.labels, **request.labels},
        resources=Resources(**pool.resources),
        network=pool.network,
        ttl_seconds=request.ttl_seconds,
    )


class PlainClaims:
    """Claims of plain pool members, with the cold create behind them."""

    def __init__(self, members: SandboxStore, sandboxes: SandboxService, provider: Provider) -> None:
        self._members = members
        self._sandboxes = sandboxes
        self._provider = provider

    def check(self, pool: PoolRecord, request: CreateSandboxRequest) -> None:
        """A claim may not ask for another image, resources, network or entry command than the pool's."""
        if not pool.plain:
            raise BadRequest(
                f"pool {pool.name!r} boots sessions of {pool.repo_owner}/{pool.repo_name}: claim it with session",
                field="from_pool",
            )
        differs = {
            "image": request.image is not None and request.image != pool.image,
            "resources": request.resources != Resources() and request.resources != Resources(**pool.resources),
            "network": request.network is not None and request.network != pool.network,
            "command": request.command is not None,
            "from_snapshot": request.from_snapshot is not None,
        }
        for field, bad in differs.items():
            if bad:
                raise BadRequest(f"a claim from pool {pool.name!r} takes the pool's {field}", field=field)

    async def launch(self, pool: PoolRecord, request: CreateSandboxRequest) -> tuple[SandboxRecord, bool]:
        """A claimed member, else a cold sandbox; the flag says whether it was claimed."""
        self.check(pool, request)
        if request.sandbox_id:
            await self._sandboxes.check_id_free(request.sandbox_id)
        won = await self._take(pool, request)
        if won is not None and await self._hand_over(pool, won, request.env):
            return await self._sandboxes.get(won.id), True
        log.info("pool.empty", pool=pool.name)
        return await self._sandboxes.create(cold_request(pool, request)), False

    async def _take(self, pool: PoolRecord, request: CreateSandboxRequest) -> SandboxRecord | None:
        ttl = request.ttl_seconds or self._sandboxes.settings.default_ttl_seconds
        for _round in range(_CLAIM_ROUNDS):
            ready = await self._members.list({POOL_LABEL: pool.name}, statuses=["warm"], limit=100)
            if not ready:
                return None
            random.shuffle(ready)  # concurrent claimers start from different members
            for member in ready:
                if await self._members.transition(
                    member.id,
                    ["warm"],
                    "running",
                    claimed_at=utcnow(),
                    ttl_seconds=ttl,
                    expires_at=utcnow() + timedelta(seconds=ttl) if ttl else None,
                    claim_env=sorted(request.env) or None,
                    env_names=sorted({*(member.env_names or []), *request.env}),
                    add_labels=dict(request.labels),
                    new_id=request.sandbox_id,
                ):
                    return await self._sandboxes.get(request.sandbox_id or member.id)
        return None

    async def _hand_over(self, pool: PoolRecord, member: SandboxRecord, env: Mapping[str, str]) -> bool:
        """Write the claim's env into the sandbox; on failure the member is deleted (False)."""
        try:
            if env:
                ref = member.provider_object_id
                assert ref is not None  # warm members run
                # umask first: the file is never readable by others, not even for a moment.
                result = await self._provider.exec(ref, _WRITE_PRIVATE, stdin=env_file(env), timeout=30)
                if result.exit_code != 0:
                    raise OSError(f"writing the claim env exited {result.exit_code}")
        except (SandboxControlError, OSError) as exc:
            await abandon_claim(self._members, self._sandboxes, pool.name, member.id, exc)
            return False
        await self._members.add_event(member.id, "claimed", pool=pool.name)
        log.info("pool.claimed", pool=pool.name, sandbox_id=member.id)
        return True
