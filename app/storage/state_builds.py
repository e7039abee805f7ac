"""Builds, their logs and the repo images they produce, in the state store."""

from __future__ import annotations

import abc
import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError

from app.storage.sessions import SessionFactory
from app.storage.tables import BuildLogRow, BuildRow, RepoImageRow
from app.storage.times import aware, utcnow

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

    @classmethod
    def from_row(cls, row: BuildRow) -> BuildRecord:
        values: dict[str, Any] = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        for name in _BUILD_TIMES:
            values[name] = aware(values[name])
        values["log_bytes"] = values["log_bytes"] or 0
        values["log_offset"] = values["log_offset"] or 0
        return cls(**values)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_BUILD_STATUSES


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

    @classmethod
    def from_row(cls, row: RepoImageRow) -> RepoImageRecord:
        values: dict[str, Any] = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        values["created_at"] = aware(values["created_at"])
        values["updated_at"] = aware(values["updated_at"])
        return cls(**values)


class BuildQueries(abc.ABC):
    """Mixed into ``StateStore``: builds, build logs, repo images."""

    @property
    @abc.abstractmethod
    def sessions(self) -> SessionFactory:
        """The store's session factory."""

    # -- builds ------------------------------------------------------------

    async def insert_build(self, record: BuildRecord) -> tuple[BuildRecord, bool]:
        """Insert a build unless its id exists; returns (stored record, created)."""
        try:
            async with self.sessions.begin() as session:
                session.add(BuildRow(**dataclasses.asdict(record)))
            return record, True
        except IntegrityError:
            existing = await self.get_build(record.id)
            if existing is None:  # pragma: no cover - deleted between the two statements
                raise
            return existing, False

    async def get_build(self, build_id: str) -> BuildRecord | None:
        async with self.sessions() as session:
            row = await session.get(BuildRow, build_id)
            return BuildRecord.from_row(row) if row is not None else None

    async def update_build(
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
        async with self.sessions.begin() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            if result.rowcount != 1:
                return None
            row = await session.get(BuildRow, build_id, populate_existing=True)
            return BuildRecord.from_row(row) if row is not None else None

    async def list_builds(
        self,
        *,
        statuses: tuple[str, ...] | None = None,
        repo_owner: str | None = None,
        repo_name: str | None = None,
        limit: int = 1000,
    ) -> list[BuildRecord]:
        query = select(BuildRow)
        if statuses is not None:
            query = query.where(BuildRow.status.in_(list(statuses)))
        if repo_owner is not None:
            query = query.where(BuildRow.repo_owner == repo_owner)
        if repo_name is not None:
            query = query.where(BuildRow.repo_name == repo_name)
        async with self.sessions() as session:
            rows = (await session.execute(query.order_by(BuildRow.created_at).limit(limit))).scalars()
            return [BuildRecord.from_row(r) for r in rows]

    # -- logs --------------------------------------------------------------

    async def append_build_log(self, build_id: str, text: str, *, log_offset: int) -> None:
        """Append one chunk to a build's log and move its raw offset, in one transaction.

        Together they make a resumed follower neither lose nor repeat a line.
        """
        async with self.sessions.begin() as session:
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

    async def read_build_log(self, build_id: str, *, after_seq: int = 0, limit: int = 500) -> list[tuple[int, str]]:
        """Chunks after ``after_seq`` in order, as (seq, text)."""
        query = (
            select(BuildLogRow.seq, BuildLogRow.data)
            .where(BuildLogRow.build_id == build_id, BuildLogRow.seq > after_seq)
            .order_by(BuildLogRow.seq)
            .limit(limit)
        )
        async with self.sessions() as session:
            return [(int(seq), str(data)) for seq, data in (await session.execute(query)).all()]

    # -- repo images -------------------------------------------------------

    async def insert_repo_image(self, record: RepoImageRecord) -> None:
        async with self.sessions.begin() as session:
            session.add(RepoImageRow(**dataclasses.asdict(record)))

    async def get_repo_image(self, image_id: str) -> RepoImageRecord | None:
        async with self.sessions() as session:
            row = await session.get(RepoImageRow, image_id)
            return RepoImageRecord.from_row(row) if row is not None else None

    async def latest_repo_image(self, repo_owner: str, repo_name: str, provider: str) -> RepoImageRecord | None:
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
        async with self.sessions() as session:
            row = (await session.execute(query)).scalars().first()
            return RepoImageRecord.from_row(row) if row is not None else None

    async def mark_repo_image_deleted(self, image_id: str) -> bool:
        """ready → deleted; True if this call did it."""
        statement = (
            update(RepoImageRow)
            .where(RepoImageRow.id == image_id, RepoImageRow.status == "ready")
            .values(status="deleted", updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        async with self.sessions.begin() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            return result.rowcount == 1
