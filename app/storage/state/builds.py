"""Builds and their logs in the state store."""

from __future__ import annotations

import builtins
import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import BuildLogRow, BuildRow
from app.storage.state.times import utcnow

#: A build that still has work to do (a restarted service resumes these).
ACTIVE_BUILD_STATUSES = ("queued", "building")
#: A build that is over; its status never changes again.
FINAL_BUILD_STATUSES = ("ready", "failed", "cancelled")

_BUILD_TIMES = ("created_at", "updated_at", "started_at", "deadline_at", "finished_at")


@dataclasses.dataclass
class BuildRecord:
    """A build as the service knows it."""

    id: str
    repo_owner: str
    repo_name: str
    status: str
    created_at: datetime
    updated_at: datetime
    branch: str | None = None
    callback_url: str | None = None
    pending_env: dict[str, str] | None = None
    sandbox_id: str | None = None
    repo_image_id: str | None = None
    base_sha: str | None = None
    error: str | None = None
    log_bytes: int = 0
    log_offset: int = 0
    started_at: datetime | None = None
    deadline_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_BUILD_STATUSES


class BuildStore:
    """Builds and their logs."""

    def __init__(self, database: Database) -> None:
        self._db = database

    # -- builds ------------------------------------------------------------

    async def insert(self, record: BuildRecord) -> tuple[BuildRecord, bool]:
        """Insert a build unless its id exists; returns (stored record, created)."""
        try:
            async with self._db.sessions.begin() as session:
                session.add(BuildRow(**row_values(record)))
            return record, True
        except IntegrityError:
            existing = await self.get(record.id)
            if existing is None:  # pragma: no cover - deleted between the two statements
                raise
            return existing, False

    async def get(self, build_id: str) -> BuildRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(BuildRow, build_id)
            return record_from_row(BuildRecord, row) if row is not None else None

    async def update(
        self, build_id: str, *, only_if_status: tuple[str, ...] | None = None, **fields: Any
    ) -> BuildRecord | None:
        """Set ``fields``; with ``only_if_status`` only while the build is in one of them.

        Returns the updated record, or None when the build is unknown or was in
        another status (someone else, e.g. a cancel, got there first).
        """
        statement = update(BuildRow).where(BuildRow.id == build_id)
        if only_if_status is not None:
            statement = statement.where(BuildRow.status.in_(list(only_if_status)))
        statement = statement.values(updated_at=utcnow(), **fields).execution_options(synchronize_session=False)
        async with self._db.sessions.begin() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            if result.rowcount != 1:
                return None
            row = await session.get(BuildRow, build_id, populate_existing=True)
            return record_from_row(BuildRecord, row) if row is not None else None

    async def list(
        self,
        *,
        statuses: tuple[str, ...] | None = None,
        repo_owner: str | None = None,
        repo_name: str | None = None,
        limit: int = 1000,
    ) -> builtins.list[BuildRecord]:
        query = select(BuildRow)
        if statuses is not None:
            query = query.where(BuildRow.status.in_(list(statuses)))
        if repo_owner is not None:
            query = query.where(BuildRow.repo_owner == repo_owner)
        if repo_name is not None:
            query = query.where(BuildRow.repo_name == repo_name)
        async with self._db.sessions() as session:
            rows = (await session.execute(query.order_by(BuildRow.created_at).limit(limit))).scalars()
            return [record_from_row(BuildRecord, r) for r in rows]

    # -- logs --------------------------------------------------------------

    async def append_log(self, build_id: str, text: str, *, log_offset: int) -> None:
        """Append one chunk to a build's log and move its raw offset, in one transaction.

        Together they make a resumed follower neither lose nor repeat a line.
        """
        async with self._db.sessions.begin() as session:
            values: dict[str, Any] = {"log_offset": log_offset}
            if text:
                last = await session.scalar(select(func.max(BuildLogRow.seq)).where(BuildLogRow.build_id == build_id))
                session.add(BuildLogRow(build_id=build_id, seq=(last or 0) + 1, data=text))
                values["log_bytes"] = func.coalesce(BuildRow.log_bytes, 0) + len(text.encode())
            await session.execute(
                update(BuildRow)
                .where(BuildRow.id == build_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    async def read_log(self, build_id: str, *, after_seq: int = 0, limit: int = 500) -> builtins.list[tuple[int, str]]:
        """Chunks after ``after_seq`` in order, as (seq, text)."""
        query = (
            select(BuildLogRow.seq, BuildLogRow.data)
            .where(BuildLogRow.build_id == build_id, BuildLogRow.seq > after_seq)
            .order_by(BuildLogRow.seq)
            .limit(limit)
        )
        async with self._db.sessions() as session:
            return [(int(seq), str(data)) for seq, data in (await session.execute(query)).all()]
