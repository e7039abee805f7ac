"""The v2 writer's bounds: bytes being uploaded, bytes in flight, concurrent bucket checks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from app.snapshots import chunked_writer
from app.snapshots.chunk_store import ByteBudget
from app.snapshots.chunked_manifest import ChunkRef
from app.snapshots.manifest import manifest_key
from app.storage.blobs import BlobStore
from app.storage.state import StateStore
from tests.unit.snapshots.test_archive import WORKSPACE
from tests.unit.snapshots.test_chunked import chunked_snapshot_of, workspace
from tests.unit.snapshots.test_chunked import state as state  # the fixture, shared


class Peak:
    """Tracks how much of something is in use at once, and the most ever."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def add(self, amount: int) -> None:
        self.now += amount
        self.most = max(self.most, self.now)


async def test_byte_budget_bounds_holders() -> None:
    budget = ByteBudget(100)
    held = Peak()

    async def hold(size: int) -> None:
        async with budget.reserve(size):
            held.add(size)
            await asyncio.sleep(0.01)
            held.add(-size)

    await asyncio.gather(*(hold(size) for size in (60, 30, 50, 20, 90, 10)))
    assert held.most <= 100 and budget.held == 0
    # One holder larger than the whole budget still gets through, alone.
    await asyncio.gather(hold(250), hold(10))
    assert held.most == 250 and budget.held == 0


async def test_byte_budget_released_on_error() -> None:
    budget = ByteBudget(10)
    with pytest.raises(RuntimeError):
        async with budget.reserve(8):
            raise RuntimeError("upload failed")
    assert budget.held == 0
    async with budget.reserve(10):
        assert budget.held == 10


def slow_bucket(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> tuple[Peak, Peak]:
    """Slows HEADs and uploads down so that they overlap; counts them (HEADs, bytes uploading)."""
    heads, uploading = Peak(), Peak()
    size, put_bytes = store.size, store.put_bytes

    async def slow_size(key: str) -> int:
        heads.add(1)
        try:
            await asyncio.sleep(0.02)
            return await size(key)
        finally:
            heads.add(-1)

    async def slow_put(key: str, data: bytes) -> int:
        uploading.add(len(data))
        try:
            await asyncio.sleep(0.02)
            return await put_bytes(key, data)
        finally:
            uploading.add(-len(data))

    monkeypatch.setattr(store, "size", slow_size)
    monkeypatch.setattr(store, "put_bytes", slow_put)
    return heads, uploading


def upload_bound(chunks: list[ChunkRef]) -> int:
    # The budget (2 MiB), or one chunk alone when it is larger (up to MAX_CHUNK); random
    # data does not compress: a frame is its chunk plus a few bytes of framing.
    return max(2 << 20, *(chunk.size for chunk in chunks)) + 4096 * len(chunks)


async def test_uploads_and_confirmations_stay_bounded(
    blob_store: BlobStore, state: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunked_writer, "WINDOW_BYTES", 2 << 20)
    monkeypatch.setattr(chunked_writer, "LOOKUP_WINDOW_BYTES", 6 << 20)
    src = workspace(tmp_path / "src", files=100)  # ~20 MiB of random data: ~18 chunks
    heads, uploading = slow_bucket(blob_store, monkeypatch)

    first = await chunked_snapshot_of(blob_store, state, "one", {WORKSPACE: src})
    assert first.stored_bytes > 0 and heads.most == 0  # nothing known: nothing to confirm
    assert 0 < uploading.most <= upload_bound(first.chunks)

    (src / "f050.bin").write_bytes(os.urandom(200_000))
    second = await chunked_snapshot_of(blob_store, state, "two", {WORKSPACE: src})
    known = len(set(second.chunks) & set(first.chunks))
    assert known >= len(first.chunks) - 8
    # Known chunks are confirmed several at a time (not one by one behind the uploads), within
    # the lookups' bound and what the in-flight window holds.
    assert 2 <= heads.most <= 16
    assert uploading.most <= upload_bound(second.chunks)


async def test_confirmation_failure_leaves_no_manifest(
    blob_store: BlobStore, state: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = workspace(tmp_path / "src", files=20)
    await chunked_snapshot_of(blob_store, state, "one", {WORKSPACE: src})
    calls: list[Any] = []

    async def broken_size(key: str) -> int:
        calls.append(key)
        raise OSError("bucket unreachable")

    monkeypatch.setattr(blob_store, "size", broken_size)
    with pytest.raises(OSError):
        await chunked_snapshot_of(blob_store, state, "two", {WORKSPACE: src})
    assert calls
    monkeypatch.undo()
    assert not await blob_store.exists(manifest_key("two"))


async def test_byte_budget_survives_cancelled_waiters() -> None:
    budget = ByteBudget(10)
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def hold(size: int) -> None:
        async with budget.reserve(size):
            entered.set()
            await leave.wait()

    async with budget.reserve(8):
        first, second = asyncio.ensure_future(hold(5)), asyncio.ensure_future(hold(5))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
    await asyncio.wait_for(entered.wait(), 1)  # woken although the first waiter was cancelled
    assert budget.held == 5 and first.cancelled()
    leave.set()
    await second
    assert budget.held == 0
