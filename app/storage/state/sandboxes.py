"""Sandboxes, their labels and their events in the state store.

A sandbox has a public ``id`` and a stable ``key`` (the id it was created
with, which its provider object carries as a label). A claimed warm pool
member is renamed to the caller's id (:meth:`SandboxStore.transition` with
``new_id``); lookups by either id, or by the provider object id, find it.

A warm pool member changes hands only through :meth:`SandboxStore.transition`:
an ``UPDATE ... WHERE id = ? AND status IN (...) AND session_id IS NULL`` whose
row count says whether *this* caller won. The database serialises concurrent
updates of one row (SQLite by its write lock, PostgreSQL by the row lock and
the re-check of the ``WHERE`` clause after the winner commits), so two claims,
or a claim and an eviction, can never both take the same sandbox, whichever
replica they run in.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import random
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from app.errors import Conflict
from app.storage.state.database import Database
from app.storage.state.rows import record_from_row, row_values
from app.storage.state.tables import SandboxEventRow, SandboxLabelRow, SandboxRow
from app.storage.state.times import aware, utcnow

#: Attempts of a member transition that SQLite reports as locked.
_LOCKED_RETRIES = 6


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
    #: The stable id the provider object is labelled with; None (old rows) means ``id``.
    key: str | None = None
    #: The replica that created it (a ``creating`` record of a live replica is left to it).
    owner: str | None = None
    #: Names of the env vars a pool claim wrote to the sandbox's env file (execs load it).
    claim_env: list[str] | None = None
    #: When a pool claim took it.
    claimed_at: datetime | None = None

    @property
    def claimed(self) -> bool:
        """Taken from a pool by a claim (a session's or a plain one): no longer the pool's."""
        return self.session_id is not None or self.claimed_at is not None

    @property
    def stable_key(self) -> str:
        """The id the provider object carries: what the reconciler matches on."""
        return self.key or self.id


class _LostRace(Exception):
    """Inside a transaction: the conditional update matched no row; roll back."""


class SandboxStore:
    """Sandbox rows, label rows (indexed filters) and the event trail."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, record: SandboxRecord) -> None:
        async with self._db.sessions.begin() as session:
            session.add(SandboxRow(**{**row_values(record), "key": record.stable_key}))
            await session.flush()  # the labels' foreign key needs the sandbox row first
            for key, value in record.labels.items():
                session.add(SandboxLabelRow(sandbox_id=record.id, key=key, value=value))

    async def update(self, sandbox_id: str, **fields: Any) -> SandboxRecord | None:
        """Update columns of one sandbox; returns the new record (None if unknown)."""
        async with self._db.sessions.begin() as session:
            row = await session.get(SandboxRow, sandbox_id)
            if row is None:
                return None
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return record_from_row(SandboxRecord, row)

    async def replace_labels(self, sandbox_id: str, labels: Mapping[str, str]) -> SandboxRecord | None:
        """Set a sandbox's labels to exactly ``labels`` (its filter rows too); None if unknown."""
        async with self._db.sessions.begin() as session:
            row = await session.get(SandboxRow, sandbox_id)
            if row is None:
                return None
            row.labels = dict(labels)
            row.updated_at = utcnow()
            await session.execute(delete(SandboxLabelRow).where(SandboxLabelRow.sandbox_id == sandbox_id))
            for key, value in labels.items():
                session.add(SandboxLabelRow(sandbox_id=sandbox_id, key=key, value=value))
            return record_from_row(SandboxRecord, row)

    async def get(self, any_id: str, *, include_deleted: bool = False) -> SandboxRecord | None:
        """Look a sandbox up by its id, its stable key (a claimed member's former id) or its provider object id."""
        async with self._db.sessions() as session:
            row = await session.get(SandboxRow, any_id)
            if row is None:
                query = select(SandboxRow).where(or_(SandboxRow.key == any_id, SandboxRow.provider_object_id == any_id))
                row = (await session.execute(query.order_by(SandboxRow.created_at.desc()))).scalars().first()
            if row is None or (row.status == "deleted" and not include_deleted):
                return None
            return record_from_row(SandboxRecord, row)

    async def list(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        statuses: Sequence[str] | None = None,
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
            query = query.where(SandboxRow.status.in_(list(statuses)))
        elif not include_deleted:
            query = query.where(SandboxRow.status != "deleted")
        query = query.order_by(SandboxRow.created_at).limit(limit)
        async with self._db.sessions() as session:
            return [record_from_row(SandboxRecord, r) for r in (await session.execute(query)).scalars()]

    async def expired(self, now: datetime) -> builtins.list[SandboxRecord]:
        """Live sandboxes whose TTL ran out by ``now``."""
        query = select(SandboxRow).where(
            SandboxRow.expires_at.is_not(None), SandboxRow.expires_at <= now, SandboxRow.status != "deleted"
        )
        async with self._db.sessions() as session:
            return [record_from_row(SandboxRecord, r) for r in (await session.execute(query)).scalars()]

    async def count_by_status(self) -> dict[str, int]:
        async with self._db.sessions() as session:
            rows = await session.execute(select(SandboxRow.status, func.count()).group_by(SandboxRow.status))
            return {status: int(count) for status, count in rows}

    async def transition(
        self,
        sandbox_id: str,
        from_statuses: Sequence[str],
        to_status: str,
        *,
        add_labels: Mapping[str, str] | None = None,
        new_id: str | None = None,
        **fields: Any,
    ) -> bool:
        """Move an unclaimed sandbox from one of ``from_statuses`` to ``to_status``; True if this call did.

        ``fields`` (e.g. ``session_id``) are set in the same statement, and
        ``add_labels`` in the same transaction, so a claim is all or nothing.
        ``new_id`` renames the sandbox in that transaction (its labels and
        events follow; its key stays). Raises ``Conflict`` when ``new_id``
        names another sandbox, by id or by key.
        """
        renaming = new_id is not None and new_id != sandbox_id
        conditions = [
            SandboxRow.id == sandbox_id,
            SandboxRow.status.in_(list(from_statuses)),
            SandboxRow.session_id.is_(None),
            SandboxRow.claimed_at.is_(None),
        ]
        values: dict[str, Any] = {"status": to_status, "updated_at": utcnow(), **fields}
        if renaming:
            taken = select(SandboxRow.id).where(or_(SandboxRow.id == new_id, SandboxRow.key == new_id))
            conditions.append(~exists(taken.scalar_subquery()))
            values.update(id=new_id, key=func.coalesce(SandboxRow.key, sandbox_id))
        statement = update(SandboxRow).where(*conditions).values(**values).execution_options(synchronize_session=False)
        final_id = new_id if renaming and new_id is not None else sandbox_id
        delay = 0.05
        for attempt in range(_LOCKED_RETRIES):
            try:
                async with self._db.sessions.begin() as session:
                    # A write comes first so SQLite takes its write lock at once (a read
                    # first would make the lock upgrade fail fast instead of waiting).
                    if renaming:
                        # Label rows point at the old id: dropped and written again under the new one.
                        await session.execute(delete(SandboxLabelRow).where(SandboxLabelRow.sandbox_id == sandbox_id))
                    result = cast(CursorResult[Any], await session.execute(statement))
                    if result.rowcount != 1:
                        raise _LostRace
                    row = await session.get(SandboxRow, final_id, populate_existing=True)
                    assert row is not None
                    if add_labels:
                        row.labels = {**row.labels, **add_labels}
                    if renaming:
                        await session.execute(
                            update(SandboxEventRow)
                            .where(SandboxEventRow.sandbox_id == sandbox_id)
                            .values(sandbox_id=final_id)
                            .execution_options(synchronize_session=False)
                        )
                    for key, value in (row.labels if renaming else add_labels or {}).items():
                        await session.merge(SandboxLabelRow(sandbox_id=final_id, key=key, value=value))
                    return True
            except _LostRace:
                if renaming and await self.get(new_id or "", include_deleted=True) is not None:
                    raise Conflict(f"sandbox {new_id!r} already exists", sandbox_id=new_id) from None
                return False
            except IntegrityError:
                raise Conflict(f"sandbox {new_id!r} already exists", sandbox_id=new_id) from None
            except OperationalError as exc:
                # SQLite under a burst of claims: the busy timeout can run out while
                # many writers queue. Nothing was committed, so trying again is safe.
                if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        return False  # pragma: no cover - the loop returns or raises

    async def change_status(self, sandbox_id: str, from_statuses: Sequence[str], to_status: str, **fields: Any) -> bool:
        """Set ``to_status`` (and ``fields``) only while the sandbox is in one of ``from_statuses``."""
        statement = (
            update(SandboxRow)
            .where(SandboxRow.id == sandbox_id, SandboxRow.status.in_(list(from_statuses)))
            .values(status=to_status, updated_at=utcnow(), **fields)
            .execution_options(synchronize_session=False)
        )
        async with self._db.sessions.begin() as session:
            return int(cast(CursorResult[Any], await session.execute(statement)).rowcount) == 1

    # -- events ----------------------------------------------------------

    async def add_event(self, sandbox_id: str, kind: str, **detail: Any) -> None:
        async with self._db.sessions.begin() as session:
            session.add(SandboxEventRow(sandbox_id=sandbox_id, at=utcnow(), kind=kind, detail=detail))

    async def list_events(self, sandbox_id: str) -> builtins.list[dict[str, Any]]:
        query = select(SandboxEventRow).where(SandboxEventRow.sandbox_id == sandbox_id).order_by(SandboxEventRow.id)
        async with self._db.sessions() as session:
            rows = (await session.execute(query)).scalars()
            return [{"at": aware(r.at), "kind": r.kind, "detail": r.detail} for r in rows]
