"""Snapshot records in the state store."""

from __future__ import annotations

import builtins
import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import SnapshotRow
from app.storage.state.times import utcnow


@dataclasses.dataclass
class SnapshotRecord:
    """A snapshot as the service knows it."""

    id: str
    sandbox_id: str
    provider: str
    status: str
    created_at: datetime
    updated_at: datetime
    session_id: str | None = None
    reason: str | None = None
    paths: list[str] | None = None
    size_bytes: int | None = None
    raw_size: int | None = None
    file_count: int | None = None
    sha256: str | None = None
    git_head: str | None = None
    repo_owner: str | None = None
    repo_name: str | None = None
    error: str | None = None
    #: The replica writing it while ``creating``.
    owner: str | None = None
    #: Archive format: 1 (one blob) or 2 (chunks); None in records older than the field (1).
    format_version: int | None = None
    #: Bytes it added to the bucket (v2: new chunks only; v1: the whole blob).
    stored_bytes: int | None = None


class SnapshotStore:
    """Snapshot records."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, record: SnapshotRecord) -> None:
        async with self._db.sessions.begin() as session:
            session.add(SnapshotRow(**row_values(record)))

    async def update(self, snapshot_id: str, **fields: Any) -> SnapshotRecord | None:
        async with self._db.sessions.begin() as session:
            row = await session.get(SnapshotRow, snapshot_id)
            if row is None:
                return None
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return record_from_row(SnapshotRecord, row)

    async def get(self, snapshot_id: str) -> SnapshotRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(SnapshotRow, snapshot_id)
            return record_from_row(SnapshotRecord, row) if row is not None else None

    async def list(
        self,
        *,
        sandbox_id: str | None = None,
        session_id: str | None = None,
        statuses: list[str] | None = None,
        limit: int = 1000,
    ) -> builtins.list[SnapshotRecord]:
        query = select(SnapshotRow)
        if sandbox_id is not None:
            query = query.where(SnapshotRow.sandbox_id == sandbox_id)
        if session_id is not None:
            query = query.where(SnapshotRow.session_id == session_id)
        if statuses:
            query = query.where(SnapshotRow.status.in_(statuses))
        query = query.order_by(SnapshotRow.created_at.desc()).limit(limit)
        async with self._db.sessions() as session:
            return [record_from_row(SnapshotRecord, r) for r in (await session.execute(query)).scalars()]
