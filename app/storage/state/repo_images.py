"""Repo images (a repository set up at a known commit, saved by a build) in the state store."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import RepoImageRow
from app.storage.state.times import utcnow


@dataclasses.dataclass
class RepoImageRecord:
    """A repo image: ``ref`` is a native image (``kind="image"``) or a snapshot id (``kind="snapshot"``)."""

    id: str
    build_id: str
    provider: str
    kind: str
    ref: str
    repo_owner: str
    repo_name: str
    base_sha: str
    status: str
    created_at: datetime
    updated_at: datetime
    branch: str | None = None


class RepoImageStore:
    """Repo image records: insert, look up, latest of a repository, soft delete."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, record: RepoImageRecord) -> None:
        async with self._db.sessions.begin() as session:
            session.add(RepoImageRow(**row_values(record)))

    async def get(self, image_id: str) -> RepoImageRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(RepoImageRow, image_id)
            return record_from_row(RepoImageRecord, row) if row is not None else None

    async def latest(self, repo_owner: str, repo_name: str, provider: str) -> RepoImageRecord | None:
        """The newest ready repo image of a repository on ``provider``."""
        query = (
            select(RepoImageRow)
            .where(
                RepoImageRow.repo_owner == repo_owner,
                RepoImageRow.repo_name == repo_name,
                RepoImageRow.provider == provider,
                RepoImageRow.status == "ready",
            )
            .order_by(RepoImageRow.created_at.desc())
            .limit(1)
        )
        async with self._db.sessions() as session:
            row = (await session.execute(query)).scalars().first()
            return record_from_row(RepoImageRecord, row) if row is not None else None

    async def mark_deleted(self, image_id: str) -> bool:
        """ready → deleted; True if this call did it."""
        statement = (
            update(RepoImageRow)
            .where(RepoImageRow.id == image_id, RepoImageRow.status == "ready")
            .values(status="deleted", updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        async with self._db.sessions.begin() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            return result.rowcount == 1
