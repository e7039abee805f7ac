"""Preview URLs: one row per live preview; revoking deletes it, so every replica sees it at once."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import PreviewRow
from app.storage.state.times import utcnow


@dataclasses.dataclass(frozen=True)
class PreviewRecord:
    """One preview: which port of which sandbox, until when."""

    id: str
    sandbox_id: str
    port: int
    public: bool
    created_at: datetime
    expires_at: datetime


class PreviewStore:
    """Add, find, list and delete previews."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def add(self, record: PreviewRecord) -> None:
        async with self._db.sessions.begin() as session:
            session.add(PreviewRow(**row_values(record)))

    async def get(self, preview_id: str) -> PreviewRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(PreviewRow, preview_id)
            return record_from_row(PreviewRecord, row) if row is not None else None

    async def list(self, sandbox_id: str) -> list[PreviewRecord]:
        """The sandbox's unexpired previews, oldest first."""
        query = (
            select(PreviewRow)
            .where(PreviewRow.sandbox_id == sandbox_id, PreviewRow.expires_at > utcnow())
            .order_by(PreviewRow.created_at, PreviewRow.id)
        )
        async with self._db.sessions() as session:
            return [record_from_row(PreviewRecord, row) for row in (await session.scalars(query)).all()]

    async def delete(self, preview_id: str) -> bool:
        """Revoke one preview; False if there was none."""
        return await self._delete(PreviewRow.id == preview_id) == 1

    async def delete_sandbox(self, sandbox_id: str) -> int:
        """Revoke every preview of a sandbox (it stopped or was deleted)."""
        return await self._delete(PreviewRow.sandbox_id == sandbox_id)

    async def expire(self) -> int:
        """Forget expired previews (their tokens are refused anyway; this keeps the table small)."""
        return await self._delete(PreviewRow.expires_at <= utcnow())

    async def _delete(self, condition: Any) -> int:
        async with self._db.sessions.begin() as session:
            result = await session.execute(delete(PreviewRow).where(condition))
            return int(cast(CursorResult[Any], result).rowcount)
