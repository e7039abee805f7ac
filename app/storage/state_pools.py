"""Warm pools in the state store, and the conditional updates their members move by.

A member changes hands only through :meth:`PoolQueries.transition_member`: an
``UPDATE ... WHERE id = ? AND status IN (...) AND session_id IS NULL`` whose
row count says whether *this* caller won. The database serialises concurrent
updates of one row (SQLite by its write lock, PostgreSQL by the row lock and
the re-check of the ``WHERE`` clause after the winner commits), so two claims,
or a claim and an eviction, can never both take the same sandbox, whichever
replica they run in.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import random
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from app.storage.sessions import SessionFactory
from app.storage.tables import PoolRow, SandboxLabelRow, SandboxRow
from app.storage.times import aware, utcnow

#: Attempts of a member transition that SQLite reports as locked.
_LOCKED_RETRIES = 6


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

    @classmethod
    def from_row(cls, row: PoolRow) -> PoolRecord:
        values: dict[str, Any] = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        values["created_at"] = aware(values["created_at"])
        values["updated_at"] = aware(values["updated_at"])
        values["implicit"] = bool(values["implicit"])
        return cls(**values)


class PoolQueries(abc.ABC):
    """Mixed into ``StateStore``: the pool table and the member transitions."""

    @property
    @abc.abstractmethod
    def sessions(self) -> SessionFactory:
        """The store's session factory."""

    async def put_pool(self, record: PoolRecord) -> PoolRecord:
        """Create or replace a pool's configuration (``created_at`` of an existing pool is kept)."""
        for _attempt in range(2):  # a concurrent first PUT of the same name wins the insert; then update
            try:
                async with self.sessions.begin() as session:
                    row = await session.get(PoolRow, record.name)
                    if row is None:
                        row = PoolRow(**dataclasses.asdict(record))
                        session.add(row)
                    else:
                        for name, value in dataclasses.asdict(record).items():
                            if name != "created_at":
                                setattr(row, name, value)
                        row.updated_at = utcnow()
                    await session.flush()
                    return PoolRecord.from_row(row)
            except IntegrityError:
                continue
        raise RuntimeError(f"pool {record.name!r} could not be written")  # pragma: no cover - two lost races

    async def get_pool(self, name: str) -> PoolRecord | None:
        async with self.sessions() as session:
            row = await session.get(PoolRow, name)
            return PoolRecord.from_row(row) if row is not None else None

    async def list_pools(
        self, *, repo_owner: str | None = None, repo_name: str | None = None, limit: int = 1000
    ) -> list[PoolRecord]:
        query = select(PoolRow)
        if repo_owner is not None:
            query = query.where(PoolRow.repo_owner == repo_owner)
        if repo_name is not None:
            query = query.where(PoolRow.repo_name == repo_name)
        async with self.sessions() as session:
            rows = (await session.execute(query.order_by(PoolRow.name).limit(limit))).scalars()
            return [PoolRecord.from_row(r) for r in rows]

    async def delete_pool(self, name: str) -> bool:
        async with self.sessions.begin() as session:
            result = cast(CursorResult[Any], await session.execute(delete(PoolRow).where(PoolRow.name == name)))
            return bool(result.rowcount)

    async def transition_member(
        self,
        sandbox_id: str,
        from_statuses: Sequence[str],
        to_status: str,
        *,
        add_labels: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> bool:
        """Move an unclaimed sandbox from one of ``from_statuses`` to ``to_status``; True if this call did.

        ``fields`` (e.g. ``session_id``) are set in the same statement, and
        ``add_labels`` in the same transaction, so a claim is all or nothing.
        """
        now = utcnow()
        statement = (
            update(SandboxRow)
            .where(
                SandboxRow.id == sandbox_id,
                SandboxRow.status.in_(list(from_statuses)),
                SandboxRow.session_id.is_(None),
            )
            .values(status=to_status, updated_at=now, **fields)
            .execution_options(synchronize_session=False)
        )
        delay = 0.05
        for attempt in range(_LOCKED_RETRIES):
            try:
                async with self.sessions.begin() as session:
                    # The UPDATE comes first so SQLite takes its write lock at once (a read
                    # first would make the lock upgrade fail fast instead of waiting).
                    result = cast(CursorResult[Any], await session.execute(statement))
                    if result.rowcount != 1:
                        return False
                    if add_labels:
                        row = await session.get(SandboxRow, sandbox_id)
                        assert row is not None
                        row.labels = {**row.labels, **add_labels}
                        for key, value in add_labels.items():
                            await session.merge(SandboxLabelRow(sandbox_id=sandbox_id, key=key, value=value))
                    return True
            except OperationalError as exc:
                # SQLite under a burst of claims: the busy timeout can run out while
                # many writers queue. Nothing was committed, so trying again is safe.
                if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        return False  # pragma: no cover - the loop returns or raises
