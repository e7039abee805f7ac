"""The state store: sandboxes, labels and events in SQLite (default) or PostgreSQL.

The schema is created at start and upgraded in place: missing tables are
created and missing (nullable) columns are added, so a newer service opens an
older database without a migration step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, event, exists, func, insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.errors import StorageUnavailable
from app.storage.sessions import SessionFactory
from app.storage.state_builds import BuildQueries
from app.storage.state_callbacks import CallbackQueries
from app.storage.state_pools import PoolQueries
from app.storage.state_snapshots import SnapshotQueries
from app.storage.tables import Base, SandboxEventRow, SandboxLabelRow, SandboxRow, SchemaVersionRow
from app.storage.times import aware, utcnow

SCHEMA_VERSION = 1


@dataclasses.dataclass
class SandboxRecord:
    """A sandbox as the service knows it."""

    id: str
    provider: str
    status: str
    created_at: datetime
    updated_at: datetime
    provider_object_id: str | None = None
    image: str | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    network: str | None = None
    command: list[str] | None = None
    env_names: list[str] | None = None
    ttl_seconds: int | None = None
    expires_at: datetime | None = None
    repo_owner: str | None = None
    repo_name: str | None = None
    session_id: str | None = None
    error: str | None = None
    deleted_at: datetime | None = None

    @classmethod
    def from_row(cls, row: SandboxRow) -> SandboxRecord:
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        for name in ("created_at", "updated_at", "expires_at", "deleted_at"):
            values[name] = aware(values[name])
        return cls(**values)


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite://`` URLs by picking the async driver."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _upgrade(connection: Connection) -> None:
    """Create missing tables, then add missing nullable columns to existing ones."""
    Base.metadata.create_all(connection)
    inspector = inspect(connection)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl_type = column.type.compile(dialect=connection.dialect)
                connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {ddl_type}'))
    row = connection.execute(select(SchemaVersionRow).where(SchemaVersionRow.id == 1)).first()
    if row is None:
        connection.execute(insert(SchemaVersionRow).values(id=1, version=SCHEMA_VERSION))
    else:
        connection.execute(update(SchemaVersionRow).where(SchemaVersionRow.id == 1).values(version=SCHEMA_VERSION))


class StateStore(SnapshotQueries, CallbackQueries, PoolQueries, BuildQueries):
    """Async access to persisted state; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self._engine: AsyncEngine | None = None
        self._sessions: SessionFactory | None = None

    async def open(self) -> None:
        """Connect, and create or upgrade the schema."""
        if self.url.startswith("sqlite"):
            db_path = self.url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_async_engine(self.url, pool_pre_ping=True)
        if self.url.startswith("sqlite"):
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except OSError as exc:
            raise StorageUnavailable(f"state store unreachable: {exc}") from exc
        maker = async_sessionmaker(self._engine, expire_on_commit=False)
        self._sessions = SessionFactory(maker, serialize=self.url.startswith("sqlite"))

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @property
    def sessions(self) -> SessionFactory:
        if self._sessions is None:
            raise RuntimeError("StateStore.open() was not called")
        return self._sessions

    async def ping(self) -> None:
        async with self.sessions() as session:
            await session.execute(text("SELECT 1"))

    # -- sandboxes -------------------------------------------------------

    async def insert_sandbox(self, record: SandboxRecord) -> None:
        async with self.sessions.begin() as session:
            session.add(SandboxRow(**dataclasses.asdict(record)))
            await session.flush()  # the labels' foreign key needs the sandbox row first
            for key, value in record.labels.items():
                session.add(SandboxLabelRow(sandbox_id=record.id, key=key, value=value))

    async def update_sandbox(self, sandbox_id: str, **fields: Any) -> SandboxRecord | None:
        """Update columns of one sandbox; returns the new record (None if unknown)."""
        async with self.sessions.begin() as session:
            row = await session.get(SandboxRow, sandbox_id)
            if row is None:
                return None
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return SandboxRecord.from_row(row)

    async def get_sandbox(self, any_id: str, *, include_deleted: bool = False) -> SandboxRecord | None:
        """Look a sandbox up by its id or its provider object id."""
        async with self.sessions() as session:
            row = await session.get(SandboxRow, any_id)
            if row is None:
                query = select(SandboxRow).where(SandboxRow.provider_object_id == any_id)
                row = (await session.execute(query.order_by(SandboxRow.created_at.desc()))).scalars().first()
            if row is None or (row.status == "deleted" and not include_deleted):
                return None
            return SandboxRecord.from_row(row)

    async def list_sandboxes(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        statuses: list[str] | None = None,
        include_deleted: bool = False,
        limit: int = 1000,
    ) -> list[SandboxRecord]:
        query = select(SandboxRow)
        for key, value in (labels or {}).items():
            query = query.where(
                exists().where(
                    SandboxLabelRow.sandbox_id == SandboxRow.id,
                    SandboxLabelRow.key == key,
                    SandboxLabelRow.value == value,
                )
            )
        if statuses:
            query = query.where(SandboxRow.status.in_(statuses))
        elif not include_deleted:
            query = query.where(SandboxRow.status != "deleted")
        query = query.order_by(SandboxRow.created_at).limit(limit)
        async with self.sessions() as session:
            return [SandboxRecord.from_row(r) for r in (await session.execute(query)).scalars()]

    async def expired_sandboxes(self, now: datetime) -> list[SandboxRecord]:
        query = select(SandboxRow).where(
            SandboxRow.expires_at.is_not(None), SandboxRow.expires_at <= now, SandboxRow.status != "deleted"
        )
        async with self.sessions() as session:
            return [SandboxRecord.from_row(r) for r in (await session.execute(query)).scalars()]

    async def count_by_status(self) -> dict[str, int]:
        async with self.sessions() as session:
            rows = await session.execute(select(SandboxRow.status, func.count()).group_by(SandboxRow.status))
            return {status: int(count) for status, count in rows}

    async def purge_labels(self, sandbox_id: str) -> None:
        async with self.sessions.begin() as session:
            await session.execute(delete(SandboxLabelRow).where(SandboxLabelRow.sandbox_id == sandbox_id))

    # -- events ----------------------------------------------------------

    async def add_event(self, sandbox_id: str, kind: str, **detail: Any) -> None:
        async with self.sessions.begin() as session:
            session.add(SandboxEventRow(sandbox_id=sandbox_id, at=utcnow(), kind=kind, detail=detail))

    async def list_events(self, sandbox_id: str) -> list[dict[str, Any]]:
        query = select(SandboxEventRow).where(SandboxEventRow.sandbox_id == sandbox_id).order_by(SandboxEventRow.id)
        async with self.sessions() as session:
            rows = (await session.execute(query)).scalars()
            return [{"at": aware(r.at), "kind": r.kind, "detail": r.detail} for r in rows]
