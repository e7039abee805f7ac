"""The state database: the engine, its sessions and the schema, for SQLite (default) or PostgreSQL.

The schema is created at start and upgraded in place: missing tables are
created and missing (nullable) columns are added, so a newer service opens an
older database without a migration step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, insert, inspect, make_url, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.errors import StorageUnavailable
from app.storage.state.sessions import SessionFactory
from app.storage.state.tables import Base, SchemaVersionRow

#: 2: snapshot chunk index (``snapshot_chunks``), snapshots' format_version and stored_bytes.
#: 3: preview URLs (``previews``).
SCHEMA_VERSION = 3


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
    """Create missing tables, add missing nullable columns to existing ones, then their missing indexes."""
    Base.metadata.create_all(connection)
    inspector = inspect(connection)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl_type = column.type.compile(dialect=connection.dialect)
                connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {ddl_type}'))
        indexed = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed:
                index.create(connection)
    row = connection.execute(select(SchemaVersionRow).where(SchemaVersionRow.id == 1)).first()
    if row is None:
        connection.execute(insert(SchemaVersionRow).values(id=1, version=SCHEMA_VERSION))
    else:
        connection.execute(update(SchemaVersionRow).where(SchemaVersionRow.id == 1).values(version=SCHEMA_VERSION))


class Database:
    """One engine and its session factory; the per-aggregate stores share it."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self._engine: AsyncEngine | None = None
        self._sessions: SessionFactory | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    async def open(self) -> None:
        """Connect, and create or upgrade the schema."""
        if self.is_sqlite:
            db_path = self.url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_async_engine(self.url, pool_pre_ping=True)
        if self.is_sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except OSError as exc:
            where = make_url(self.url).render_as_string(hide_password=True)
            raise StorageUnavailable(
                f"state store {where} unreachable ({exc.strerror or exc}); check SANDBOX_STATE_URL and that the "
                "database server is running"
            ) from exc
        maker = async_sessionmaker(self._engine, expire_on_commit=False)
        self._sessions = SessionFactory(maker, serialize=self.is_sqlite)

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @property
    def sessions(self) -> SessionFactory:
        if self._sessions is None:
            raise RuntimeError("the state store is not open (StateStore.open() was not called)")
        return self._sessions

    async def ping(self) -> None:
        async with self.sessions() as session:
            await session.execute(text("SELECT 1"))
