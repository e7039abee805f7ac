"""The chunk index: which snapshot chunks the bucket holds, and when a writer last relied on each.

The bucket is the truth about chunk *contents*; this index is what makes the
dedup decision cheap (one row lookup instead of a HEAD per chunk for unknown
ones) and what garbage collection claims chunks through, atomically, so that a
writer and the collector never both act on one chunk (``app.services.chunk_gc``).
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.storage.state.database import Database
from app.storage.state.tables import ChunkRow
from app.storage.state.times import utcnow

LIVE = "live"
DELETING = "deleting"
ChunkState = Literal["live", "deleting"]
#: Hashes per ``IN (...)`` clause (SQLite's default host-parameter limit is far above).
_BATCH = 500


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


class ChunkIndex:
    """Rows of ``snapshot_chunks``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def mark(self, sha256: str) -> ChunkState | None:
        """Refresh the mark of a live chunk; return the chunk's state (None: not indexed).

        Called before a writer relies on the chunk: from now on the collector leaves
        it alone for a whole grace period. A ``deleting`` chunk is not marked.
        """
        return (await self.mark_many([sha256])).get(sha256)

    async def mark_many(self, hashes: Collection[str]) -> dict[str, ChunkState]:
        """``mark`` for many chunks in one transaction: the states of the indexed ones."""
        async with self._db.sessions.begin() as session:
            return await self._mark_many(session, sorted(set(hashes)))

    @staticmethod
    async def _mark_many(session: Any, distinct: builtins.list[str]) -> dict[str, ChunkState]:
        now = utcnow()
        states: dict[str, ChunkState] = {}
        for start in range(0, len(distinct), _BATCH):
            batch = distinct[start : start + _BATCH]
            await session.execute(
                update(ChunkRow)
                .where(ChunkRow.sha256.in_(batch), ChunkRow.state == LIVE)
                .values(marked_at=now)
                .execution_options(synchronize_session=False)
            )
            rows = await session.execute(select(ChunkRow.sha256, ChunkRow.state).where(ChunkRow.sha256.in_(batch)))
            states.update((sha, cast(ChunkState, state)) for sha, state in rows)
        return states

    async def add(self, sha256: str, *, raw_size: int, stored_size: int) -> ChunkState:
        """Index one chunk about to be uploaded (see ``add_many``); its state."""
        return (await self.add_many([(sha256, raw_size, stored_size)])).get(sha256, "deleting")

    async def add_many(self, chunks: Collection[tuple[str, int, int]]) -> dict[str, ChunkState]:
        """Index chunks ``(sha256, raw_size, stored_size)`` about to be uploaded (marked now); their states.

        Unless a row exists already; an existing row (another writer's) is marked too, only
        the collector deletes rows. A chunk answered ``deleting`` is being collected.
        """
        now = utcnow()
        rows = {
            sha256: {
                "sha256": sha256,
                "state": LIVE,
                "raw_size": raw_size,
                "stored_size": stored_size,
                "created_at": now,
                "marked_at": now,
            }
            for sha256, raw_size, stored_size in chunks
        }
        distinct = sorted(rows)
        dialect_insert = sqlite_insert if self._db.is_sqlite else pg_insert
        async with self._db.sessions.begin() as session:
            for start in range(0, len(distinct), _BATCH):
                values = [rows[sha] for sha in distinct[start : start + _BATCH]]
                await session.execute(dialect_insert(ChunkRow).values(values).on_conflict_do_nothing())
            return await self._mark_many(session, distinct)

    async def mark_all(self, hashes: Collection[str]) -> int:
        """Refresh the marks of ``hashes``; return how many of them are live (the rest were collected)."""
        distinct = sorted(set(hashes))
        now = utcnow()
        live = 0
        async with self._db.sessions.begin() as session:
            for start in range(0, len(distinct), _BATCH):
                batch = distinct[start : start + _BATCH]
                result = await session.execute(
                    update(ChunkRow)
                    .where(ChunkRow.sha256.in_(batch), ChunkRow.state == LIVE)
                    .values(marked_at=now)
                    .execution_options(synchronize_session=False)
                )
                live += _rowcount(result)
        return live

    async def stale(self, cutoff: datetime, limit: int) -> builtins.list[str]:
        """Live chunks whose last mark is older than ``cutoff`` (GC candidates), oldest first."""
        query = (
            select(ChunkRow.sha256)
            .where(ChunkRow.state == LIVE, ChunkRow.marked_at < cutoff)
            .order_by(ChunkRow.marked_at)
            .limit(limit)
        )
        async with self._db.sessions() as session:
            return list((await session.execute(query)).scalars())

    async def claim(self, sha256: str, cutoff: datetime) -> bool:
        """Move a live chunk not marked since ``cutoff`` to ``deleting``; False if a writer marked it since."""
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(ChunkRow)
                .where(ChunkRow.sha256 == sha256, ChunkRow.state == LIVE, ChunkRow.marked_at < cutoff)
                .values(state=DELETING)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result) == 1

    async def deleting(self, limit: int) -> builtins.list[str]:
        """Chunks claimed by a collector that has not finished them (e.g. it crashed)."""
        async with self._db.sessions() as session:
            query = select(ChunkRow.sha256).where(ChunkRow.state == DELETING).limit(limit)
            return list((await session.execute(query)).scalars())

    async def forget(self, sha256: str) -> None:
        """Drop a ``deleting`` chunk's row, once its blob is gone."""
        async with self._db.sessions.begin() as session:
            await session.execute(delete(ChunkRow).where(ChunkRow.sha256 == sha256, ChunkRow.state == DELETING))

    async def totals(self) -> tuple[int, int]:
        """(number of indexed chunks, their stored bytes)."""
        async with self._db.sessions() as session:
            row = (await session.execute(select(func.count(), func.coalesce(func.sum(ChunkRow.stored_size), 0)))).one()
        return int(row[0]), int(row[1])
