"""Hostile archives: refused (or clamped) on restore and on capture; nothing lands outside the target."""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import tarfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from app.errors import SnapshotCorrupt
from app.snapshots.manifest import SnapshotManifest, blob_key, manifest_key
from app.snapshots.reader import read_snapshot, restore_snapshot, verify_snapshot
from app.snapshots.safe_tar import EntryGuard, UnsafeEntry, normalize_name
from app.snapshots.writer import write_snapshot
from app.storage.blobs import BlobStore, DirectoryBlobStore
from tests.support_tree import collect, stream_of, tar_extract

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mtime = 1_700_000_000
    return info, data


def tar_bytes(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


async def put_raw_snapshot(store: BlobStore, snapshot_id: str, members: list[Member], paths: list[str]) -> None:
    """Store a crafted archive with a correct manifest, as a tampered bucket would hold it."""
    raw = tar_bytes(members)
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        sandbox_id="sbx",
        provider="local",
        paths=paths,
        raw_size=len(raw),
        compressed_size=len(blob),
        file_count=sum(not info.isdir() for info, _ in members),
        sha256=hashlib.sha256(blob).hexdigest(),
        created_at=datetime.now(UTC),
    )
    await store.put_bytes(blob_key(snapshot_id), blob)
    await store.put_bytes(manifest_key(snapshot_id), manifest.to_bytes())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    blobs = DirectoryBlobStore(tmp_path / "blobs")
    await blobs.open()
    yield blobs
    await blobs.aclose()


def root(name: str = "workspace") -> Member:
    return member(name, tarfile.DIRTYPE, mode=0o755)


HOSTILE: dict[str, Callable[[Path], list[Member]]] = {
    "dotdot": lambda out: [
        root(),
        member("workspace/ok.txt", data=b"ok"),
        member("workspace/../outside/evil.txt", data=b"x"),
    ],
    "absolute": lambda out: [root(), member(str(out / "abs.txt"), data=b"x")],
    "escaping-symlink": lambda out: [
        root(),
        member("workspace/esc", tarfile.SYMTYPE, link="../../outside"),
        member("workspace/esc/pwned.txt", data=b"x"),
    ],
    "absolute-symlink": lambda out: [
        root(),
        member("workspace/abs", tarfile.SYMTYPE, link=str(out)),
        member("workspace/abs/pwned.txt", data=b"x"),
    ],
    "climbing-symlink": lambda out: [
        root(),
        member("workspace/d", tarfile.DIRTYPE),
        member("workspace/d/x", tarfile.SYMTYPE, link="sub/../../.."),
    ],
    "through-internal-symlink": lambda out: [
        root(),
        member("workspace/sub", tarfile.DIRTYPE),
        member("workspace/l", tarfile.SYMTYPE, link="sub"),
        member("workspace/l/x.txt", data=b"x"),
    ],
    "escaping-hardlink": lambda out: [
        root(),
        member("workspace/hl", tarfile.LNKTYPE, link="workspace/../outside/sentinel"),
    ],
    # a/b/t -> ../../outside stays inside from a/b; the same link one level up does not.
    "hardlink-moves-a-symlink-up": lambda out: [
        root(),
        member("workspace/a", tarfile.DIRTYPE),
        member("workspace/a/b", tarfile.DIRTYPE),
        member("workspace/a/b/t", tarfile.SYMTYPE, link="../../outside"),
        member("workspace/l", tarfile.LNKTYPE, link="workspace/a/b/t"),
        member("workspace/l/pwned.txt", data=b"x"),
    ],
    "dir-over-symlink": lambda out: [
        root(),
        member("workspace/s", tarfile.SYMTYPE, link=str(out)),
        member("workspace/s", tarfile.DIRTYPE, mode=0o777),
    ],
    "absolute-hardlink": lambda out: [root(), member("workspace/hl", tarfile.LNKTYPE, link=str(out / "sentinel"))],
    "foreign-hardlink": lambda out: [root(), member("workspace/hl", tarfile.LNKTYPE, link="etc/passwd")],
    "char-device": lambda out: [root(), member("workspace/null", tarfile.CHRTYPE)],
    "block-device": lambda out: [root(), member("workspace/sda", tarfile.BLKTYPE)],
    "fifo": lambda out: [root(), member("workspace/pipe", tarfile.FIFOTYPE)],
    "outside-every-path": lambda out: [root(), member("etc/cron.d/evil", data=b"x")],
    "root-not-a-dir": lambda out: [member("workspace", data=b"x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_archive_refused(store: BlobStore, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "blobs" not in p.parts)
    await put_raw_snapshot(store, "evil", HOSTILE[case](outside), ["/workspace"])

    target = tmp_path / "target"

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        await tar_extract(stream, target)

    with pytest.raises(SnapshotCorrupt) as caught:
        await restore_snapshot(store, "evil", importer)
    assert "evil" in str(caught.value) or isinstance(caught.value, UnsafeEntry)
    with pytest.raises(SnapshotCorrupt):
        await verify_snapshot(store, "evil")
    after = sorted(
        p.relative_to(tmp_path)
        for p in tmp_path.rglob("*")
        if "blobs" not in p.parts and target not in p.parents and p != target
    )
    assert after == before, "something was written outside the target"
    assert (outside / "sentinel").read_text() == "untouched"
    assert not any(p.is_symlink() and "outside" in os.readlink(p) for p in target.rglob("*"))


async def test_unsafe_entry_names_the_entry(store: BlobStore, tmp_path: Path) -> None:
    await put_raw_snapshot(store, "evil", HOSTILE["escaping-symlink"](tmp_path), ["/workspace"])
    with pytest.raises(UnsafeEntry) as caught:
        await collect(read_snapshot(store, "evil"))
    assert caught.value.entry == "/workspace/esc"
    assert "leaves /workspace" in str(caught.value)
    assert caught.value.code == "snapshot_unsafe_entry" and caught.value.status_code == 422


async def test_modes_clamped_on_restore(store: BlobStore, tmp_path: Path) -> None:
    members = [
        root(),
        member("workspace/suid", data=b"#!/bin/sh\n", mode=0o4755),
        member("workspace/sgid", data=b"x", mode=0o2711),
        member("workspace/none", data=b"x", mode=0o000),
        member("workspace/sticky", tarfile.DIRTYPE, mode=0o1777),
        member("workspace/closed", tarfile.DIRTYPE, mode=0o000),
    ]
    await put_raw_snapshot(store, "modes", members, ["/workspace"])
    target = tmp_path / "target"

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        code, err = await tar_extract(stream, target)
        assert code == 0, err

    await restore_snapshot(store, "modes", importer)
    mode = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in target.iterdir()}
    assert mode == {"suid": 0o755, "sgid": 0o711, "none": 0o600, "sticky": 0o777, "closed": 0o700}


# -- capture side: the sandbox is untrusted too ---------------------------------


async def test_hostile_export_refused_and_nothing_stored(store: BlobStore, tmp_path: Path) -> None:
    crafted = tar_bytes([member(".", tarfile.DIRTYPE), member("./a.txt", data=b"a"), member("../../etc/x", data=b"x")])
    with pytest.raises(UnsafeEntry, match=r"'\.\.'"):
        await write_snapshot(
            store, snapshot_id="w", sandbox_id="s", provider="local", paths=["/workspace"],
            export=lambda p: stream_of(crafted),
        )  # fmt: skip
    assert await store.list() == []


async def test_special_files_skipped_and_modes_clamped_on_capture(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    (src / "tool").chmod(0o4755)
    from tests.support_tree import tar_stream

    manifest = await write_snapshot(
        store, snapshot_id="w", sandbox_id="s", provider="local", paths=["/workspace"], export=lambda p: tar_stream(src)
    )
    assert manifest.skipped == ["/workspace/pipe"]
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(await store.get_bytes(blob_key("w")))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes["workspace/tool"] == 0o755
    assert "workspace/pipe" not in modes


async def test_external_symlinks_need_the_opt_in(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".venv/bin").mkdir(parents=True)
    os.symlink("/usr/bin/python3", src / ".venv/bin/python")
    from tests.support_tree import tar_stream

    with pytest.raises(UnsafeEntry, match=r"\.venv/bin/python"):
        await write_snapshot(
            store, snapshot_id="v", sandbox_id="s", provider="local", paths=["/workspace"],
            export=lambda p: tar_stream(src),
        )  # fmt: skip
    assert await store.list() == []

    await write_snapshot(
        store, snapshot_id="v", sandbox_id="s", provider="local", paths=["/workspace"],
        export=lambda p: tar_stream(src), allow_external_symlinks=True,
    )  # fmt: skip
    target = tmp_path / "target"

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        await tar_extract(stream, target)

    with pytest.raises(UnsafeEntry):
        await restore_snapshot(store, "v", importer)  # the reader's default is strict too
    await restore_snapshot(store, "v", importer, allow_external_symlinks=True)
    assert os.readlink(target / ".venv/bin/python") == "/usr/bin/python3"


async def test_external_symlink_still_cannot_be_written_through(store: BlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    await put_raw_snapshot(
        store, "x",
        [root(), member("workspace/l", tarfile.SYMTYPE, link=str(outside)), member("workspace/l/f", data=b"x")],
        ["/workspace"],
    )  # fmt: skip
    with pytest.raises(UnsafeEntry, match="passes through the symlink"):
        await collect(read_snapshot(store, "x", allow_external_symlinks=True))


# -- the guard itself -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("./a//b/", "a/b"), (".", "."), ("./", "."), ("a/./b", "a/b"), ("ünï/ç", "ünï/ç")],
)
def test_normalize_name(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "a\0b", "x" * 300])
def test_normalize_name_refuses(name: str) -> None:
    with pytest.raises(UnsafeEntry):
        normalize_name(name)


def _normalize_slowly(name: str) -> str | None:
    """The rule spelled out without a fast path; ``None`` where it refuses."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if "\0" in name or name.startswith("/") or ".." in parts:
        return None
    if len(name.encode(errors="surrogateescape")) > 4096 or any(
        len(p.encode(errors="surrogateescape")) > 255 for p in parts
    ):
        return None
    return "/".join(parts) or "."


def test_normalize_name_fast_path_agrees_with_the_rule() -> None:
    rng = random.Random(99)
    pieces = ["a", "bc", ".", "..", "", "...", ".x", "x.", "ü", "\0", "\udcff", " ", "x" * 254, "y" * 256]
    names = ["/".join(rng.choice(pieces) for _ in range(rng.randint(1, 5))) for _ in range(5000)]
    names += ["x" * 255, "x" * 256, "a/" + "b" * 253, "/" + "a" * 10, "a" * 200 + "/" + "b" * 200]
    for name in names:
        expected = _normalize_slowly(name)
        if expected is None:
            with pytest.raises(UnsafeEntry):
                normalize_name(name)
        else:
            assert normalize_name(name) == expected, name


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("a", "b"),
        ("d/e/l", "../../x"),
        ("d/l", "../d/./x"),
        ("d/l", "/workspace/d/x"),
        ("l", "/workspace"),
        ("node_modules/.bin/tsc", "../typescript/bin/tsc"),
    ],
)
def test_symlinks_inside_accepted(name: str, target: str) -> None:
    info, _ = member(name, tarfile.SYMTYPE, link=target)
    assert EntryGuard("/workspace").check(info).linkname == target


@pytest.mark.parametrize(
    ("name", "target"),
    [("l", ".."), ("d/l", "../.."), ("l", "a/../../x"), ("l", "a/../b"), ("l", "/etc"), ("l", "/workspace2/x"),
     ("l", "/workspace/../etc")],
)  # fmt: skip
def test_symlinks_escaping_refused(name: str, target: str) -> None:
    info, _ = member(name, tarfile.SYMTYPE, link=target)
    with pytest.raises(UnsafeEntry):
        EntryGuard("/workspace").check(info)
    assert EntryGuard("/workspace", allow_external_symlinks=True).check(info).linkname == target


def test_hardlink_to_external_symlink_refused() -> None:
    guard = EntryGuard("/workspace", allow_external_symlinks=True)
    guard.check(member("py", tarfile.SYMTYPE, link="/usr/bin/python3")[0])
    with pytest.raises(UnsafeEntry, match="hard link to the symlink"):
        guard.check(member("py2", tarfile.LNKTYPE, link="py")[0])
    guard.check(member("in", tarfile.SYMTYPE, link="py")[0])
    assert guard.check(member("f", data=b"x")[0]).name == "f"


def test_no_member_reuses_a_symlinks_name() -> None:
    guard = EntryGuard("/workspace", allow_external_symlinks=True)
    guard.check(member("venv", tarfile.SYMTYPE, link="/usr")[0])
    for kind in (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE):
        with pytest.raises(UnsafeEntry, match="symlink of the same name"):
            guard.check(member("venv", kind, link="x")[0])


def test_hardlink_to_a_symlink_is_checked_from_its_own_directory() -> None:
    guard = EntryGuard("/workspace")
    guard.check(member("a/b/t", tarfile.SYMTYPE, link="../../x")[0])
    assert guard.check(member("c/d/same-depth", tarfile.LNKTYPE, link="a/b/t")[0]).linkname == "a/b/t"
    with pytest.raises(UnsafeEntry, match="from here"):
        guard.check(member("shallow", tarfile.LNKTYPE, link="a/b/t")[0])
    # The second name is a symlink too: nothing may be written through it.
    with pytest.raises(UnsafeEntry, match="passes through the symlink"):
        guard.check(member("c/d/same-depth/f", data=b"x")[0])
