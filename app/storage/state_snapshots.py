"""Snapshot records in the state store."""

from __future__ import annotations

import abc
import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.storage.sessions import SessionFactory
from app.storage.tables import SnapshotRow
from app.storage.times import aware, utcnow


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

    @classmethod
    def from_row(cls, row: SnapshotRow) -> SnapshotRecord:
        values: dict[str, Any] = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        values["created_at"] = aware(values["created_at"])
        values["updated_at"] = aware(values["updated_at"])
        return cls(**values)


class SnapshotQueries(abc.ABC):
    """Mixed into ``StateStore``: the snapshot table's reads and writes."""

    @property
    @abc.abstractmethod
    def sessions(self) -> SessionFactory:
        """The store's session factory."""

    async def insert_snapshot(self, record: SnapshotRecord) -> None:
        async with self.sessions.begin() as session:
            session.add(SnapshotRow(**dataclasses.asdict(record)))

    async def update_snapshot(self, snapshot_id: str, **fields: Any) -> SnapshotRecord | None:
        async with self.sessions.begin() as session:
            row = await session.get(SnapshotRow, snapshot_id)
            if row is None:
                return None
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return SnapshotRecord.from_row(row)

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        async with self.sessions() as session:
            row = await session.get(SnapshotRow, snapshot_id)
            return SnapshotRecord.from_row(row) if row is not None else None

    async def list_snapshots(
        self,
        *,
        sandbox_id: str | None = None,
        session_id: str | None = None,
        statuses: list[str] | None = None,
        limit: int = 1000,
    ) -> list[SnapshotRecord]:
        query = select(SnapshotRow)
        if sandbox_id is not None:
            query = query.where(SnapshotRow.sandbox_id == sandbox_id)
        if session_id is not None:
            query = query.where(SnapshotRow.session_id == session_id)
        if statuses:
            query = query.where(SnapshotRow.status.in_(statuses))
        query = query.order_by(SnapshotRow.created_at.desc()).limit(limit)
        async with self.sessions() as session:
            return [SnapshotRecord.from_row(r) for r in (await session.execute(query)).scalars()]
