"""Warm pool configurations in the state store.

Members are ordinary sandbox rows with the pool label; they change hands through
:meth:`app.storage.state.sandboxes.SandboxStore.transition`.
"""

from __future__ import annotations

import builtins
import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import IntegrityError

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import PoolRow
from app.storage.state.times import utcnow


@dataclasses.dataclass
class PoolRecord:
    """A warm pool's configuration as the service knows it."""

    name: str
    repo_owner: str
    repo_name: str
    target: int
    max_age_seconds: int
    created_at: datetime
    updated_at: datetime
    branch: str | None = None
    image: str | None = None
    repo_image_id: str | None = None
    implicit: bool = False
    #: ``session`` or ``plain``.
    kind: str = "session"
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    network: str | None = None

    @property
    def plain(self) -> bool:
        """Members are plain sandboxes (no repository, no session)."""
        return self.kind == "plain"


class PoolStore:
    """Warm pool configurations (their members are sandbox rows with the pool label)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def put(self, record: PoolRecord) -> PoolRecord:
        """Create or replace a pool's configuration (``created_at`` of an existing pool is kept)."""
        for _attempt in range(2):  # a concurrent first PUT of the same name wins the insert; then update
            try:
                async with self._db.sessions.begin() as session:
                    row = await session.get(PoolRow, record.name)
                    if row is None:
                        row = PoolRow(**row_values(record))
                        session.add(row)
                    else:
                        for name, value in row_values(record).items():
                            if name != "created_at":
                                setattr(row, name, value)
                        row.updated_at = utcnow()
                    await session.flush()
                    return record_from_row(PoolRecord, row)
            except IntegrityError:
                continue
        raise RuntimeError(f"pool {record.name!r} could not be written")  # pragma: no cover - two lost races

    async def get(self, name: str) -> PoolRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(PoolRow, name)
            return record_from_row(PoolRecord, row) if row is not None else None

    async def list(
        self, *, repo_owner: str | None = None, repo_name: str | None = None, limit: int = 1000
    ) -> builtins.list[PoolRecord]:
        query = select(PoolRow)
        if repo_owner is not None:
            query = query.where(PoolRow.repo_owner == repo_owner)
        if repo_name is not None:
            query = query.where(PoolRow.repo_name == repo_name)
        async with self._db.sessions() as session:
            rows = (await session.execute(query.order_by(PoolRow.name).limit(limit))).scalars()
            return [record_from_row(PoolRecord, r) for r in rows]

    async def delete(self, name: str) -> bool:
        async with self._db.sessions.begin() as session:
            result = cast(CursorResult[Any], await session.execute(delete(PoolRow).where(PoolRow.name == name)))
            return bool(result.rowcount)
