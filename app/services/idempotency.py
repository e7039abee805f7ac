"""``Idempotency-Key`` on the creating endpoints: the same key and body give the same result, across restarts.

Stripe's semantics: the first request under a key runs; a retry with the same
key and the same body gets the first request's answer again (replayed, not
re-run); the same key with another body is a 409. A key whose request is
still running is a 409 too, unless the replica running it died: then the
retry takes it over. Every keyed request runs under a resource id fixed when
the key is first seen (the sandbox or snapshot it makes), so a take-over
finds what the dead replica already made instead of making a second one.
Answers of 5xx are not kept: the retry runs again. Keys live 24 hours.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from app.errors import BadRequest, Conflict
from app.logging import get_logger
from app.storage.state.idempotency import IdempotencyRecord, IdempotencyStore
from app.storage.state.times import utcnow

log = get_logger("idempotency")

#: How long a key and its answer are kept.
KEY_TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


class IdempotencyConflict(Conflict):
    """The key was used with another request body."""

    code = "idempotency_conflict"


class IdempotencyInProgress(Conflict):
    """A request with this key is still running; retry later."""

    code = "idempotency_in_progress"


@dataclass(frozen=True)
class Replay:
    """The stored answer of the key's first request."""

    status_code: int
    body: Any


@dataclass(frozen=True)
class Claim:
    """This request runs. ``resumed``: a dead replica ran it before, ``resource_id`` may exist already."""

    storage_key: str
    resource_id: str
    resumed: bool


def request_hash(payload: Any) -> str:
    """A stable hash of a request (canonical JSON: key order and spacing do not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyService:
    """Begins, finishes and abandons keyed requests for one replica."""

    def __init__(
        self, store: IdempotencyStore, *, replica_id: str, live_replicas: Callable[[], Awaitable[set[str]]]
    ) -> None:
        self._store = store
        self._replica_id = replica_id
        self._live_replicas = live_replicas

    async def begin(self, scope: str, key: str, payload: Any, new_id: Callable[[], str]) -> Replay | Claim:
        """Replay the key's answer, or claim the right to run it (raises the two 409s)."""
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise BadRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
        storage_key = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
        digest = request_hash(payload)
        now = utcnow()
        record = IdempotencyRecord(
            key=storage_key,
            request_hash=digest,
            status="running",
            resource_id=new_id(),
            created_at=now,
            expires_at=now + KEY_TTL,
            owner=self._replica_id,
        )
        stored, created = await self._store.begin(record)
        if created:
            return Claim(storage_key, stored.resource_id, resumed=False)
        if stored.request_hash != digest:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request")
        if stored.status == "done" and stored.response_status is not None:
            return Replay(stored.response_status, json.loads(stored.response_body or "null"))
        owner_dead = stored.owner != self._replica_id and stored.owner not in await self._live_replicas()
        if owner_dead and await self._store.take_over(storage_key, stored.owner, self._replica_id):
            log.info("idempotency.taken_over", resource_id=stored.resource_id, previous_owner=stored.owner)
            return Claim(storage_key, stored.resource_id, resumed=True)
        raise IdempotencyInProgress("a request with this Idempotency-Key is still running; retry later")

    async def finish(self, claim: Claim, status_code: int, body: Any) -> None:
        """Keep the answer (a 5xx is forgotten instead, so a retry runs again)."""
        if status_code >= 500:
            await self._store.abandon(claim.storage_key)
            return
        await self._store.complete(claim.storage_key, status_code, json.dumps(body, default=str))

    async def abandon(self, claim: Claim) -> None:
        """The request died before an answer worth keeping: let a retry run it again."""
        await self._store.abandon(claim.storage_key)

    async def expire(self) -> int:
        """Drop keys older than a day (run with the reaper)."""
        return await self._store.expire()
