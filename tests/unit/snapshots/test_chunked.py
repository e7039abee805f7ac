"""Snapshot format v2: content-defined chunks, dedup, verification, v1 compatibility."""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from app.snapshots.chunk_store import ChunkStore
from app.snapshots.chunked_manifest import CHUNK_PREFIX, ChunkedManifest, chunk_key
from app.snapshots.chunked_writer import write_chunked_snapshot
from app.snapshots.chunking import MAX_CHUNK, MIN_CHUNK, ChunkCutter
from app.snapshots.manifest import SnapshotManifest, manifest_key
from app.snapshots.reader import load_manifest, read_snapshot, restore_snapshot, verify_snapshot
from app.storage.blobs import BlobStore
from app.storage.state import StateStore
from tests.support_tree import build_sample_tree, collect, tar_extract, tar_stream, tree_hash
from tests.unit.snapshots.test_archive import WORKSPACE, Importer, expect_corrupt, snapshot_of


def cut(data: bytes) -> list[bytes]:
    cutter = ChunkCutter()
    chunks: list[bytes] = []
    for start in range(0, len(data), 1 << 20):
        chunks += cutter.feed(data[start : start + (1 << 20)])
    return chunks + cutter.finish()


def test_chunks_reassemble_within_bounds() -> None:
    data = random.Random(1).randbytes(24 << 20)
    chunks = cut(data)
    assert b"".join(chunks) == data
    assert all(MIN_CHUNK <= len(c) <= MAX_CHUNK for c in chunks[:-1])
    assert 8 <= len(chunks) <= 40  # ~1 MiB on average


def test_boundaries_stable_under_inserts() -> None:
    rng = random.Random(2)
    data = rng.randbytes(32 << 20)
    shifted = data[: 10 << 20] + rng.randbytes(777) + data[10 << 20 : 20 << 20] + data[(20 << 20) + 5000 :]
    before, after = set(cut(data)), cut(shifted)
    reused = sum(len(c) for c in after if c in before)
    assert reused >= 0.85 * len(shifted)  # only the chunks around the two edits are new
    # A fixed-size split, for contrast, shares nothing after the first insert.
    fixed = {data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)}
    assert sum(1 for i in range(11 << 20, len(shifted), 1 << 20) if shifted[i : i + (1 << 20)] in fixed) == 0


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    await store.open()
    yield store
    await store.aclose()


async def chunked_snapshot_of(
    store: BlobStore, state: StateStore, snapshot_id: str, trees: dict[str, Path]
) -> ChunkedManifest:
    return await write_chunked_snapshot(
        ChunkStore(store, state.chunks),
        snapshot_id=snapshot_id,
        sandbox_id="sbx_1",
        provider="local",
        paths=list(trees),
        export=lambda path: tar_stream(trees[path]),
        mark_all=state.chunks.mark_all,
        session_id="sess-1",
        repo="octo/repo",
        reason="test",
    )


def workspace(root: Path, files: int = 40, size: int = 200_000) -> Path:
    """Files of incompressible data, big enough to span several chunks."""
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:03}.bin").write_bytes(os.urandom(size))
        os.utime(root / f"f{i:03}.bin", (1_700_000_000, 1_700_000_000))
    os.utime(root, (1_700_000_000, 1_700_000_000))
    return root


async def test_roundtrip_and_manifest(blob_store: BlobStore, state: StateStore, tmp_path: Path) -> None:
    src = build_sample_tree(tmp_path / "src")
    manifest = await chunked_snapshot_of(blob_store, state, "v2", {WORKSPACE: src})
    stored = json.loads(await blob_store.get_bytes(manifest_key("v2")))
    assert stored["format_version"] == 2 and [c["sha256"] for c in stored["chunks"]] == [
        c.sha256 for c in manifest.chunks
    ]
    assert manifest.stored_bytes == manifest.compressed_size > 0  # all new
    assert sorted(await blob_store.list(CHUNK_PREFIX)) == sorted({c.key for c in manifest.chunks})
    assert await load_manifest(blob_store, "v2") == manifest

    importer = Importer(tmp_path / "restored")
    assert await restore_snapshot(blob_store, "v2", importer) == manifest
    assert tree_hash(importer.dest(WORKSPACE)) == tree_hash(src)
    code, stderr = await tar_extract(read_snapshot(blob_store, "v2"), tmp_path / "root")
    assert code == 0, stderr
    assert tree_hash(tmp_path / "root" / "workspace") == tree_hash(src)


async def test_second_snapshot_uploads_only_changes(blob_store: BlobStore, state: StateStore, tmp_path: Path) -> None:
    src = workspace(tmp_path / "src", files=120)  # ~24 MiB: ~22 chunks
    first = await chunked_snapshot_of(blob_store, state, "one", {WORKSPACE: src})
    same = await chunked_snapshot_of(blob_store, state, "same", {WORKSPACE: src})
    assert same.stored_bytes == 0 and same.chunks == first.chunks

    (src / "f060.bin").write_bytes(os.urandom(200_000))
    os.utime(src / "f060.bin", (1_700_000_000, 1_700_000_000))
    second = await chunked_snapshot_of(blob_store, state, "two", {WORKSPACE: src})
    # One 200 kB file changed: the chunk holding it is new, and a few after it until the
    # cut points fall in step again (at most ~5 of ~22 in 20 trials of this layout).
    assert 0 < second.stored_bytes <= 0.35 * first.stored_bytes
    assert len(set(second.chunks) & set(first.chunks)) >= len(first.chunks) - 8
    importer = Importer(tmp_path / "restored")
    await restore_snapshot(blob_store, "two", importer)
    assert tree_hash(importer.dest(WORKSPACE)) == tree_hash(src)


async def test_known_chunk_missing_from_bucket_is_uploaded_again(
    blob_store: BlobStore, state: StateStore, tmp_path: Path
) -> None:
    src = workspace(tmp_path / "src", files=10)
    first = await chunked_snapshot_of(blob_store, state, "one", {WORKSPACE: src})
    lost = first.chunks[0]
    await blob_store.delete(lost.key)  # the index still lists it: the bucket has the last word
    again = await chunked_snapshot_of(blob_store, state, "again", {WORKSPACE: src})
    assert again.stored_bytes == lost.stored_size
    await verify_snapshot(blob_store, "again")


@pytest.fixture
async def stored_v2(blob_store: BlobStore, state: StateStore, tmp_path: Path) -> ChunkedManifest:
    return await chunked_snapshot_of(blob_store, state, "A", {WORKSPACE: workspace(tmp_path / "a", files=20)})


async def test_tampered_chunk(blob_store: BlobStore, stored_v2: ChunkedManifest, tmp_path: Path) -> None:
    ref = stored_v2.chunks[1]
    raw = bytearray(zstandard.ZstdDecompressor().decompress(await blob_store.get_bytes(ref.key)))
    raw[100] ^= 0x01  # a well-formed frame of the wrong content, same sizes
    forged = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(bytes(raw))
    await blob_store.put_bytes(ref.key, forged)
    await expect_corrupt(blob_store, "A", tmp_path, match="chunk 1")


async def test_flipped_stored_byte(blob_store: BlobStore, stored_v2: ChunkedManifest, tmp_path: Path) -> None:
    ref = stored_v2.chunks[0]
    packed = bytearray(await blob_store.get_bytes(ref.key))
    packed[len(packed) // 2] ^= 0x40
    await blob_store.put_bytes(ref.key, bytes(packed))
    await expect_corrupt(blob_store, "A", tmp_path, match="chunk 0")


async def test_missing_chunk(blob_store: BlobStore, stored_v2: ChunkedManifest, tmp_path: Path) -> None:
    await blob_store.delete(stored_v2.chunks[-1].key)
    await expect_corrupt(blob_store, "A", tmp_path, match="missing")


async def test_forged_total_hash(blob_store: BlobStore, stored_v2: ChunkedManifest, tmp_path: Path) -> None:
    forged = stored_v2.model_copy(update={"sha256": "0" * 64})
    await blob_store.put_bytes(manifest_key("A"), forged.to_bytes())
    await expect_corrupt(blob_store, "A", tmp_path, match="stream's SHA-256")


async def test_truncated_manifest(blob_store: BlobStore, stored_v2: ChunkedManifest, tmp_path: Path) -> None:
    text = stored_v2.to_bytes()
    await blob_store.put_bytes(manifest_key("A"), text[: len(text) // 2])
    await expect_corrupt(blob_store, "A", tmp_path, match="not valid JSON")
    # A manifest that parses but lost chunks no longer adds up.
    data = json.loads(text)
    data["chunks"] = data["chunks"][:-1]
    await blob_store.put_bytes(manifest_key("A"), json.dumps(data).encode())
    await expect_corrupt(blob_store, "A", tmp_path, match="do not add up")


async def test_v1_and_v2_side_by_side(blob_store: BlobStore, state: StateStore, tmp_path: Path) -> None:
    src = build_sample_tree(tmp_path / "src")
    old = await snapshot_of(blob_store, "old", {WORKSPACE: src})
    new = await chunked_snapshot_of(blob_store, state, "new", {WORKSPACE: src})
    assert isinstance(await load_manifest(blob_store, "old"), SnapshotManifest)
    assert isinstance(await load_manifest(blob_store, "new"), ChunkedManifest)
    assert old.raw_size == new.raw_size  # the same tar stream, stored two ways
    for snapshot_id in ("old", "new"):
        importer = Importer(tmp_path / snapshot_id)
        await restore_snapshot(blob_store, snapshot_id, importer)
        assert tree_hash(importer.dest(WORKSPACE)) == tree_hash(src)
    assert len(await collect(read_snapshot(blob_store, "old"))) > 0


async def test_chunk_keys_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid chunk hash"):
        chunk_key("../snapshots/x")
