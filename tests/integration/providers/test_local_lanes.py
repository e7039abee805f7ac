"""A snapshot restored into a real local sandbox through concurrent ``tar -x`` lanes.

The local provider's ``import_tar`` splits a snapshot section into lanes; these checks
use real bwrap sandboxes (skipped without bwrap, failing under ``SANDBOX_TEST_STRICT=1``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.errors import SnapshotCorrupt
from app.providers.base import Provider, SandboxSpec
from app.providers.local import files as local_files
from app.snapshots.reader import restore_snapshot
from app.snapshots.writer import write_snapshot
from app.storage.blobs import BlobStore, DirectoryBlobStore
from tests.support_tree import build_sample_tree, tar_extract, tar_stream, tree_entries
from tests.unit.snapshots.test_fanout import build_wide_tree

WORKSPACE = "/workspace"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    blobs = DirectoryBlobStore(tmp_path / "blobs")
    await blobs.open()
    yield blobs
    await blobs.aclose()


def with_lanes(provider: Provider, lanes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``provider`` extract in ``lanes`` lanes, whatever this machine's core count."""
    monkeypatch.setattr(provider, "capabilities", replace(provider.capabilities, import_lanes=lanes))


@pytest.fixture
def feeds(local_provider: Provider, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the helper processes fed by import_tar, and the most at once (in two lanes)."""
    seen = {"now": 0, "most": 0, "total": 0}
    real = local_files.feed_input

    async def counting(*args: Any, **kwargs: Any) -> None:
        seen["now"] += 1
        seen["total"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            await real(*args, **kwargs)
        finally:
            seen["now"] -= 1

    monkeypatch.setattr(local_files, "feed_input", counting)
    with_lanes(local_provider, 2, monkeypatch)
    return seen


async def new_sandbox(provider: Provider) -> str:
    return (await provider.create(SandboxSpec(sandbox_id=f"sbx_{secrets.token_hex(4)}"))).provider_object_id


async def snapshot_of(store: BlobStore, tree: Path) -> str:
    snapshot_id = "snap_" + secrets.token_hex(4)
    await write_snapshot(
        store, snapshot_id=snapshot_id, sandbox_id="src", provider="local", paths=[WORKSPACE],
        export=lambda p: tar_stream(tree), allow_external_symlinks=True,
    )  # fmt: skip
    return snapshot_id


@pytest.mark.parametrize("build", [build_sample_tree, build_wide_tree])
async def test_lanes_restore_the_tree_exactly(
    local_provider: Provider, store: BlobStore, tmp_path: Path, feeds: dict[str, int], build: Any
) -> None:
    tree = build(tmp_path / "tree")
    snapshot_id = await snapshot_of(store, tree)
    ref = await new_sandbox(local_provider)
    await restore_snapshot(
        store, snapshot_id, lambda p, s: local_provider.import_tar(ref, p, s), allow_external_symlinks=True
    )
    assert feeds["most"] == 2 and feeds["total"] >= 3  # two lanes at once, then more rounds
    code, stderr = await tar_extract(local_provider.export_tar(ref, WORKSPACE), tmp_path / "out")
    assert code == 0, stderr
    assert tree_entries(tmp_path / "out") == tree_entries(tree)


async def test_a_corrupt_snapshot_stops_every_lane(
    local_provider: Provider, store: BlobStore, tmp_path: Path, feeds: dict[str, int]
) -> None:
    snapshot_id = await snapshot_of(store, build_wide_tree(tmp_path / "tree"))
    key = f"snapshots/{snapshot_id}.tar.zst"
    blob = bytearray(await store.get_bytes(key))
    blob[len(blob) // 2] ^= 0xFF
    await store.put_bytes(key, bytes(blob))
    ref = await new_sandbox(local_provider)
    with pytest.raises(SnapshotCorrupt):
        await restore_snapshot(store, snapshot_id, lambda p, s: local_provider.import_tar(ref, p, s))
    assert feeds["now"] == 0
    # The lane cancelled by its sibling's failure is reaped in the background, then untracked.
    registry = local_provider._exec_registry(ref)  # type: ignore[attr-defined]
    for _ in range(200):
        if not registry:
            break
        await asyncio.sleep(0.05)
    assert registry == set()


async def test_a_failing_lane_raises_its_own_error(
    local_provider: Provider, store: BlobStore, tmp_path: Path, feeds: dict[str, int]
) -> None:
    snapshot_id = await snapshot_of(store, build_wide_tree(tmp_path / "tree"))
    ref = await new_sandbox(local_provider)
    result = await local_provider.exec(ref, ["sh", "-c", "echo x > /workspace/taken"], timeout=30)
    assert result.exit_code == 0
    with pytest.raises(NotADirectoryError):
        await restore_snapshot(store, snapshot_id, lambda p, s: local_provider.import_tar(ref, "/workspace/taken", s))
    assert feeds["now"] == 0


async def test_one_core_means_one_tar(
    local_provider: Provider, store: BlobStore, tmp_path: Path, feeds: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_lanes(local_provider, 1, monkeypatch)
    tree = build_wide_tree(tmp_path / "tree")
    snapshot_id = await snapshot_of(store, tree)
    ref = await new_sandbox(local_provider)
    await restore_snapshot(store, snapshot_id, lambda p, s: local_provider.import_tar(ref, p, s))
    assert feeds["total"] == 1
    code, stderr = await tar_extract(local_provider.export_tar(ref, WORKSPACE), tmp_path / "out")
    assert code == 0, stderr
    assert tree_entries(tmp_path / "out") == tree_entries(tree)
