"""The state store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.storage.state import BuildRecord, RepoImageRecord, SandboxRecord, StateStore
from app.storage.state.database import SCHEMA_VERSION
from app.storage.state.times import utcnow


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = StateStore(url)
    await store.open()
    yield store
    await store.aclose()


def record(sandbox_id: str, **fields: object) -> SandboxRecord:
    now = utcnow()
    values: dict[str, object] = {"provider": "fake", "status": "running", "created_at": now, "updated_at": now}
    values.update(fields)
    return SandboxRecord(id=sandbox_id, **values)  # type: ignore[arg-type]


async def test_round_trip_and_label_queries(store: StateStore) -> None:
    prefix = uuid.uuid4().hex[:8]
    a, b = f"{prefix}-a", f"{prefix}-b"
    await store.sandboxes.insert(record(a, labels={"run": prefix, "kind": "x"}, provider_object_id=f"p-{a}"))
    await store.sandboxes.insert(record(b, labels={"run": prefix, "kind": "y"}, resources={"cpu": 1.5}))
    got = await store.sandboxes.get(a)
    assert got is not None and got.labels == {"run": prefix, "kind": "x"}
    assert got.created_at.tzinfo is not None
    assert (await store.sandboxes.get(f"p-{a}")) == got
    assert [r.id for r in await store.sandboxes.list({"run": prefix})] == [a, b]
    assert [r.id for r in await store.sandboxes.list({"run": prefix, "kind": "y"})] == [b]
    updated = await store.sandboxes.update(b, status="deleted", deleted_at=utcnow())
    assert updated is not None and updated.status == "deleted"
    assert await store.sandboxes.get(b) is None
    assert (await store.sandboxes.get(b, include_deleted=True)) is not None
    assert [r.id for r in await store.sandboxes.list({"run": prefix})] == [a]
    assert await store.sandboxes.update("nope", status="x") is None


async def test_events_and_expiry(store: StateStore) -> None:
    sandbox_id = uuid.uuid4().hex
    await store.sandboxes.insert(record(sandbox_id, expires_at=utcnow() - timedelta(seconds=5)))
    await store.sandboxes.add_event(sandbox_id, "created", provider_object_id="p1")
    await store.sandboxes.add_event(sandbox_id, "stopped")
    events = await store.sandboxes.list_events(sandbox_id)
    assert [e["kind"] for e in events] == ["created", "stopped"]
    assert events[0]["detail"] == {"provider_object_id": "p1"}
    assert sandbox_id in {r.id for r in await store.sandboxes.expired(utcnow())}
    counts = await store.sandboxes.count_by_status()
    assert counts["running"] >= 1


async def test_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database from an older release (missing columns) opens and gains them."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE sandboxes (id VARCHAR(128) PRIMARY KEY, provider VARCHAR(32), status VARCHAR(16), "
            "provider_object_id VARCHAR(256), created_at DATETIME, updated_at DATETIME)"
        )
        conn.execute(
            "INSERT INTO sandboxes VALUES ('old-1', 'local', 'running', 'lcl-1', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    store = StateStore(f"sqlite:///{path}")
    await store.open()
    try:
        old = await store.sandboxes.get("old-1")
        assert old is not None and old.session_id is None and old.labels in (None, {})
        await store.sandboxes.update("old-1", session_id="s-1")
        assert (await store.sandboxes.get("old-1")).session_id == "s-1"  # type: ignore[union-attr]
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sandboxes)")}
        assert {"labels", "session_id", "expires_at", "deleted_at"} <= columns
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_concurrent_read_then_write_transactions(store: StateStore) -> None:
    """Many writers at once (read, then write, each): none fails with "database is locked"."""
    import asyncio

    prefix = uuid.uuid4().hex[:8]
    ids = [f"{prefix}-{i}" for i in range(40)]
    await asyncio.gather(*(store.sandboxes.insert(record(i, labels={"run": prefix})) for i in ids))
    for _ in range(3):
        await asyncio.gather(
            *(store.sandboxes.update(i, status="stopped") for i in ids),
            *(store.sandboxes.add_event(i, "poked") for i in ids),
            *(store.sandboxes.get(i) for i in ids),
        )
    assert {r.status for r in await store.sandboxes.list({"run": prefix}, include_deleted=True)} == {"stopped"}


async def test_builds_logs_and_repo_images(store: StateStore) -> None:
    now = utcnow()
    build = BuildRecord(id="b1", repo_owner="o", repo_name="r", status="queued", created_at=now, updated_at=now)
    stored, created = await store.builds.insert(build)
    assert created and stored.id == "b1"
    again, created = await store.builds.insert(BuildRecord(**{**build.__dict__, "repo_name": "other"}))
    assert not created and again.repo_name == "r"  # the first one stands
    # Conditional updates: a cancel and a finish cannot both win.
    assert await store.builds.update("b1", only_if_status=("queued", "building"), status="cancelled") is not None
    assert await store.builds.update("b1", only_if_status=("queued", "building"), status="ready") is None
    assert (await store.builds.get("b1")).status == "cancelled"  # type: ignore[union-attr]

    await store.builds.append_log("b1", "one\n", log_offset=4)
    await store.builds.append_log("b1", "", log_offset=9)  # the offset moves even without text
    await store.builds.append_log("b1", "two\n", log_offset=13)
    assert await store.builds.read_log("b1") == [(1, "one\n"), (2, "two\n")]
    assert await store.builds.read_log("b1", after_seq=1) == [(2, "two\n")]
    record = await store.builds.get("b1")
    assert record is not None and (record.log_offset, record.log_bytes) == (13, 8)

    for index, image_id in enumerate(["rimg_0000000000000001", "rimg_0000000000000002"]):
        created_at = now + timedelta(seconds=index)
        await store.repo_images.insert(
            RepoImageRecord(
                id=image_id, build_id="b1", provider="local", kind="snapshot", ref=f"snap_{index}",
                repo_owner="o", repo_name="r", base_sha="a" * 40, status="ready",
                created_at=created_at, updated_at=created_at,
            )
        )  # fmt: skip
    latest = await store.repo_images.latest("o", "r", "local")
    assert latest is not None and latest.id == "rimg_0000000000000002"
    assert await store.repo_images.latest("o", "r", "docker") is None
    assert await store.repo_images.mark_deleted("rimg_0000000000000002")
    assert not await store.repo_images.mark_deleted("rimg_0000000000000002")
    latest = await store.repo_images.latest("o", "r", "local")
    assert latest is not None and latest.id == "rimg_0000000000000001"


async def test_chunk_index(store: StateStore) -> None:
    """Marks, the conditional claim garbage collection relies on, and the totals, on both databases."""
    index = store.chunks
    a, b = "a" * 64, "b" * 64
    assert await index.mark(a) is None  # unknown
    assert await index.add(a, raw_size=100, stored_size=60) == "live"
    assert await index.add(a, raw_size=100, stored_size=60) == "live"  # a second writer: no error, one row
    assert await index.add(b, raw_size=200, stored_size=90) == "live"
    assert await index.totals() == (2, 150)
    past, future = utcnow() - timedelta(hours=1), utcnow() + timedelta(hours=1)
    assert await index.stale(past, 10) == []  # both just marked
    assert sorted(await index.stale(future, 10)) == [a, b]
    assert not await index.claim(a, past)  # marked after the cutoff: kept
    assert await index.claim(a, future)
    assert await index.mark(a) == "deleting" and await index.deleting(10) == [a]
    assert await index.mark_all([a, b]) == 1  # a is no longer live
    # The batched forms the writer uses: one transaction for many chunks.
    c = "c" * 64
    assert await index.mark_many([a, b, c]) == {a: "deleting", b: "live"}
    assert await index.add_many([(a, 100, 60), (c, 300, 120)]) == {a: "deleting", c: "live"}
    assert await index.claim(c, future)
    await index.forget(c)
    await index.forget(a)
    await index.forget(b)  # live rows are never forgotten
    assert await index.totals() == (1, 90) and await index.mark(a) is None


async def test_schema_1_snapshots_gain_the_v2_columns(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE snapshots (id VARCHAR(128) PRIMARY KEY, sandbox_id VARCHAR(128), provider VARCHAR(32), "
            "status VARCHAR(16), size_bytes BIGINT, created_at DATETIME, updated_at DATETIME)"
        )
        conn.execute(
            "INSERT INTO snapshots VALUES ('snap_old', 'sbx', 'local', 'ready', 300, "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
        conn.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER)")
        conn.execute("INSERT INTO schema_version VALUES (1, 1)")
    store = StateStore(f"sqlite:///{path}")
    await store.open()
    try:
        old = await store.snapshots.get("snap_old")
        assert old is not None and old.format_version is None and old.stored_bytes is None
        assert await store.chunks.totals() == (0, 0)
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in conn.execute("PRAGMA table_info(snapshots)")}
        assert {"format_version", "stored_bytes"} <= columns
