"""Idempotency keys: the first request under a key, its body's hash, and the answer it got.

A row is inserted when a keyed request starts (``running``, with the id of the
resource it will make) and completed with the answer (``done``). The primary
key makes two concurrent requests with one key a race only one wins.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update
from sqlalchemy.exc import IntegrityError

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import IdempotencyRow
from app.storage.state.times import utcnow


@dataclasses.dataclass
class IdempotencyRecord:
    """One key's request and, once done, its answer."""

    key: str
    request_hash: str
    status: str
    resource_id: str
    created_at: datetime
    expires_at: datetime
    owner: str | None = None
    response_status: int | None = None
    response_body: str | None = None


class IdempotencyStore:
    """Insert-or-get, complete, abandon and expire idempotency keys."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def begin(self, record: IdempotencyRecord) -> tuple[IdempotencyRecord, bool]:
        """Insert ``record``; on a known key return the stored one. Returns (stored, created)."""
        try:
            async with self._db.sessions.begin() as session:
                session.add(IdempotencyRow(**row_values(record)))
            return record, True
        except IntegrityError:
            existing = await self.get(record.key)
            if existing is None:  # expired and removed between the two statements: try once more
                async with self._db.sessions.begin() as session:
                    session.add(IdempotencyRow(**row_values(record)))
                return record, True
            return existing, False

    async def get(self, key: str) -> IdempotencyRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(IdempotencyRow, key)
            return record_from_row(IdempotencyRecord, row) if row is not None else None

    async def take_over(self, key: str, old_owner: str | None, new_owner: str) -> bool:
        """Make ``new_owner`` run a ``running`` key whose owner died; False if someone else did first."""
        condition = IdempotencyRow.owner.is_(None) if old_owner is None else IdempotencyRow.owner == old_owner
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(IdempotencyRow)
                .where(IdempotencyRow.key == key, IdempotencyRow.status == "running", condition)
                .values(owner=new_owner)
                .execution_options(synchronize_session=False)
            )
            return int(cast(CursorResult[Any], result).rowcount) == 1

    async def complete(self, key: str, status: int, body: str) -> None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(IdempotencyRow)
                .where(IdempotencyRow.key == key)
                .values(status="done", response_status=status, response_body=body)
                .execution_options(synchronize_session=False)
            )

    async def abandon(self, key: str) -> None:
        """Forget a key whose request failed in a way a retry may fix (a 5xx): the retry runs again."""
        async with self._db.sessions.begin() as session:
            await session.execute(delete(IdempotencyRow).where(IdempotencyRow.key == key))

    async def expire(self) -> int:
        async with self._db.sessions.begin() as session:
            result = await session.execute(delete(IdempotencyRow).where(IdempotencyRow.expires_at <= utcnow()))
            return int(cast(CursorResult[Any], result).rowcount)
