"""Leases on background work, and the replicas that hold them.

A lease is a row ``(name, owner, expires_at)``. Taking one is a conditional
UPDATE that matches only when the lease is free, expired or already ours; its
row count says whether we got it. That works the same on SQLite and
PostgreSQL and holds no transaction open while the work runs (which
``SELECT ... FOR UPDATE SKIP LOCKED`` would need). The owner renews before
expiry; a dead owner's lease runs out and the next replica to ask takes it.
Times are the replicas' own clocks: keep them in sync (NTP); leases last tens
of seconds, far beyond ordinary skew.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.storage.state.database import Database
from app.storage.state.rows import record_from_row
from app.storage.state.tables import LeaseRow, ReplicaRow
from app.storage.state.times import utcnow


@dataclasses.dataclass
class LeaseRecord:
    """Who holds a lease, and until when."""

    name: str
    owner: str
    expires_at: datetime
    acquired_at: datetime
    renewed_at: datetime


@dataclasses.dataclass
class ReplicaRecord:
    """A replica as its heartbeat last described it."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


class LeaseStore:
    """Acquire, renew, release and list leases."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``owner`` (or extend it if ours); False while another owner's lease runs."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        takeover = (
            update(LeaseRow)
            .where(LeaseRow.name == name, or_(LeaseRow.owner == owner, LeaseRow.expires_at <= now))
            .values(owner=owner, expires_at=expires, renewed_at=now)
            .execution_options(synchronize_session=False)
        )
        async with self._db.sessions.begin() as session:
            if _rowcount(await session.execute(takeover)) == 1:
                return True
        try:
            async with self._db.sessions.begin() as session:
                session.add(LeaseRow(name=name, owner=owner, expires_at=expires, acquired_at=now, renewed_at=now))
        except IntegrityError:
            return False  # someone holds it (or took it between our two statements)
        return True

    async def renew(self, names: Collection[str], owner: str, ttl: float) -> set[str]:
        """Extend ``owner``'s leases among ``names``; returns those still ours."""
        if not names:
            return set()
        now = utcnow()
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(LeaseRow)
                .where(LeaseRow.name.in_(list(names)), LeaseRow.owner == owner, LeaseRow.expires_at > now)
                .values(expires_at=now + timedelta(seconds=ttl), renewed_at=now)
                .execution_options(synchronize_session=False)
            )
            held = await session.execute(
                select(LeaseRow.name).where(LeaseRow.name.in_(list(names)), LeaseRow.owner == owner)
            )
            return {str(name) for name in held.scalars()}

    async def release(self, names: Collection[str], owner: str) -> int:
        """Hand ``owner``'s leases back at once (shutdown, work done), so another replica need not wait."""
        if not names:
            return 0
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                delete(LeaseRow)
                .where(LeaseRow.name.in_(list(names)), LeaseRow.owner == owner)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(result)

    async def list(self, *, live_only: bool = True) -> builtins.list[LeaseRecord]:
        query = select(LeaseRow).order_by(LeaseRow.name)
        if live_only:
            query = query.where(LeaseRow.expires_at > utcnow())
        async with self._db.sessions() as session:
            return [record_from_row(LeaseRecord, row) for row in (await session.execute(query)).scalars()]


class ReplicaStore:
    """Replica heartbeats: who is alive."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def heartbeat(self, replica_id: str, *, host: str, pid: int, started_at: datetime) -> None:
        """Record that ``replica_id`` is alive now (insert on first beat)."""
        now = utcnow()
        async with self._db.sessions.begin() as session:
            row = await session.get(ReplicaRow, replica_id)
            if row is None:
                session.add(ReplicaRow(id=replica_id, host=host, pid=pid, started_at=started_at, heartbeat_at=now))
            else:
                row.heartbeat_at = now

    async def remove(self, replica_id: str) -> None:
        async with self._db.sessions.begin() as session:
            await session.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))

    async def live(self, within: float) -> builtins.list[ReplicaRecord]:
        """Replicas whose last heartbeat is younger than ``within`` seconds."""
        since = utcnow() - timedelta(seconds=within)
        query = select(ReplicaRow).where(ReplicaRow.heartbeat_at > since).order_by(ReplicaRow.started_at)
        async with self._db.sessions() as session:
            return [record_from_row(ReplicaRecord, row) for row in (await session.execute(query)).scalars()]

    async def forget_older_than(self, seconds: float) -> int:
        """Drop rows of replicas silent for ``seconds`` (they are dead; their leases ran out long ago)."""
        before = utcnow() - timedelta(seconds=seconds)
        async with self._db.sessions.begin() as session:
            result = await session.execute(delete(ReplicaRow).where(ReplicaRow.heartbeat_at < before))
            return _rowcount(result)
