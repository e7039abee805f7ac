"""Callback outbox rows in the state store (see ``app.services.callbacks``).

Claiming is a lease, not a lock held across the HTTP call: one conditional
``UPDATE`` marks due rows with a fresh claim token and ``lease_until``, and
only rows whose ``WHERE`` still matched are the claimer's. That is portable:
SQLite serialises writers, and PostgreSQL (READ COMMITTED) re-evaluates the
``WHERE`` of an ``UPDATE`` on a row another transaction changed meanwhile, so
of two replicas racing for a row exactly one sees it still unleased. No
transaction stays open during delivery, which ``SELECT ... FOR UPDATE SKIP
LOCKED`` would need and SQLite cannot do. Finishing a row requires the same
claim token, so a worker whose lease ran out cannot overwrite the outcome of
the worker that took the row over.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import CallbackRow
from app.storage.state.times import aware, utcnow

PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "gave_up"
CALLBACK_STATUSES = (PENDING, DELIVERED, GAVE_UP)


@dataclasses.dataclass
class CallbackRecord:
    """One outbound callback as the outbox knows it."""

    id: str
    url: str
    body: str
    idempotency_key: str
    kind: str
    status: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    lease_until: datetime | None = None
    lease_owner: str | None = None
    last_error: str | None = None
    last_status: int | None = None
    delivered_at: datetime | None = None

    @property
    def payload(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)


def _claimable(now: datetime) -> Any:
    """Rows no live worker holds."""
    return or_(CallbackRow.lease_until.is_(None), CallbackRow.lease_until < now)


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


class CallbackStore:
    """The callback outbox's rows: inserts, leased claims, outcomes."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, record: CallbackRecord) -> tuple[CallbackRecord, bool]:
        """Insert ``record``; on a known idempotency key return the stored one instead.

        Returns ``(stored record, created)``. The unique index decides, so two
        replicas enqueuing the same key at once still make one row.
        """
        try:
            async with self._db.sessions.begin() as session:
                session.add(CallbackRow(**row_values(record)))
            return record, True
        except IntegrityError:
            existing = await self.get_by_key(record.idempotency_key)
            if existing is None:  # the conflict was not the key: a real error
                raise
            return existing, False

    async def get(self, callback_id: str) -> CallbackRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(CallbackRow, callback_id)
            return record_from_row(CallbackRecord, row) if row is not None else None

    async def get_by_key(self, idempotency_key: str) -> CallbackRecord | None:
        query = select(CallbackRow).where(CallbackRow.idempotency_key == idempotency_key)
        async with self._db.sessions() as session:
            row = (await session.execute(query)).scalars().first()
            return record_from_row(CallbackRecord, row) if row is not None else None

    async def list(self, *, status: str | None = None, limit: int = 100) -> builtins.list[CallbackRecord]:
        """Newest first, optionally of one status."""
        query = select(CallbackRow)
        if status is not None:
            query = query.where(CallbackRow.status == status)
        query = query.order_by(CallbackRow.created_at.desc(), CallbackRow.id).limit(limit)
        async with self._db.sessions() as session:
            return [record_from_row(CallbackRecord, r) for r in (await session.execute(query)).scalars()]

    async def claim_due(
        self, *, now: datetime, lease_until: datetime, owner: str, limit: int
    ) -> builtins.list[CallbackRecord]:
        """Lease up to ``limit`` due, unleased, pending rows to ``owner`` (a fresh token per claim).

        ``attempts`` counts claims: a worker that dies mid-request did make an attempt.
        """
        due = (
            CallbackRow.status == PENDING,
            CallbackRow.next_attempt_at <= now,
            CallbackRow.deadline_at > now,
            _claimable(now),
        )
        candidates = select(CallbackRow.id).where(*due).order_by(CallbackRow.next_attempt_at).limit(limit)
        async with self._db.sessions() as session:
            ids = list((await session.execute(candidates)).scalars())
        if not ids:
            return []
        async with self._db.sessions.begin() as session:
            # The due conditions are repeated: between the read above and this
            # write another replica may have claimed some of the rows.
            await session.execute(
                update(CallbackRow)
                .where(CallbackRow.id.in_(ids), *due)
                .values(
                    lease_owner=owner,
                    lease_until=lease_until,
                    attempts=CallbackRow.attempts + 1,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
        query = select(CallbackRow).where(CallbackRow.id.in_(ids), CallbackRow.lease_owner == owner)
        async with self._db.sessions() as session:
            rows = (await session.execute(query.order_by(CallbackRow.next_attempt_at))).scalars()
            return [record_from_row(CallbackRecord, r) for r in rows]

    async def finish_attempt(self, callback_id: str, owner: str, **fields: Any) -> bool:
        """Record an attempt's outcome and drop the lease; False if ``owner`` no longer holds it."""
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(CallbackRow)
                .where(CallbackRow.id == callback_id, CallbackRow.lease_owner == owner)
                .values(**fields, lease_owner=None, lease_until=None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result) == 1

    async def release_leases(self, owners: Collection[str]) -> int:
        """Drop leases of claims that will not finish (shutdown), so another worker retries at once."""
        if not owners:
            return 0
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(CallbackRow)
                .where(CallbackRow.lease_owner.in_(list(owners)), CallbackRow.status == PENDING)
                .values(lease_owner=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

    async def expire_overdue(self, now: datetime) -> builtins.list[CallbackRecord]:
        """Give up pending, unleased rows whose deadline passed (e.g. while no worker ran)."""
        overdue = (CallbackRow.status == PENDING, CallbackRow.deadline_at <= now, _claimable(now))
        async with self._db.sessions() as session:
            ids = list((await session.execute(select(CallbackRow.id).where(*overdue))).scalars())
        if not ids:
            return []
        note = literal("deadline passed before delivery; last error: ") + func.coalesce(
            CallbackRow.last_error, literal("none")
        )
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(CallbackRow)
                .where(CallbackRow.id.in_(ids), *overdue)
                .values(status=GAVE_UP, last_error=note, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        query = select(CallbackRow).where(CallbackRow.id.in_(ids), CallbackRow.status == GAVE_UP)
        async with self._db.sessions() as session:
            return [record_from_row(CallbackRecord, r) for r in (await session.execute(query)).scalars()]

    async def next_due_at(self, now: datetime) -> datetime | None:
        """When the earliest unleased pending row falls due (None when there is none)."""
        query = select(func.min(CallbackRow.next_attempt_at)).where(CallbackRow.status == PENDING, _claimable(now))
        async with self._db.sessions() as session:
            return aware((await session.execute(query)).scalar())
