"""Restoring a path through concurrent lanes: same tree as one tar, same refusals, same failures."""

from __future__ import annotations

import asyncio
import os
import tarfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from app.errors import ProviderError, SnapshotCorrupt
from app.snapshots import fanout
from app.snapshots.fanout import LaneRouter
from app.snapshots.reader import restore_snapshot
from app.snapshots.safe_tar import UnsafeEntry
from app.snapshots.writer import write_snapshot
from app.storage.blobs import BlobStore, DirectoryBlobStore
from tests.support_tree import build_sample_tree, tar_extract, tar_stream, tree_entries
from tests.unit.snapshots.test_safe_tar import HOSTILE, Member, member, put_raw_snapshot, root

WORKSPACE = "/workspace"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    blobs = DirectoryBlobStore(tmp_path / "blobs")
    await blobs.open()
    yield blobs
    await blobs.aclose()


class LaneImporter:
    """Plays a provider that extracts lanes: every round's streams at once, with real ``tar -x``."""

    def __init__(self, dest: Path, lanes: int = 2) -> None:
        self.dest = dest
        self.lanes = lanes
        self.rounds: list[int] = []

    async def __call__(self, path: str, stream: AsyncIterator[bytes]) -> None:
        rounds = stream.rounds(self.lanes)  # type: ignore[attr-defined]
        try:
            async for streams in rounds:
                self.rounds.append(len(streams))
                await self._round(streams)
        finally:
            await rounds.aclose()

    async def _round(self, streams: Sequence[AsyncIterator[bytes]]) -> None:
        async def one(stream: AsyncIterator[bytes]) -> None:
            code, stderr = await tar_extract(stream, self.dest)
            assert code == 0, stderr

        await asyncio.gather(*(one(s) for s in streams))


def build_wide_tree(root: Path) -> Path:
    """Many directories and files, links within and across subtrees, fixed mtimes."""
    for d in range(12):
        sub = root / "src" / f"pkg{d}" / "mod"
        sub.mkdir(parents=True)
        for f in range(15):
            (sub / f"file{f}.py").write_text(f"# {d}/{f}\n" * (f + 1))
        os.symlink(f"file{d % 15}.py", sub / "alias.py")
    (root / "bin").mkdir()
    os.symlink("../src/pkg3/mod/file1.py", root / "bin" / "tool")
    os.link(root / "src/pkg0/mod/file0.py", root / "src/pkg7/mod/hard0.py")
    os.link(root / "src/pkg1/mod/file2.py", root / "bin/hard2.py")
    (root / "src/pkg5/empty").mkdir()
    (root / "src/pkg6/closed").mkdir(mode=0o700)
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: (-len(p.parts), str(p)))):
        if not path.is_symlink():
            os.utime(path, (1_700_000_000 + i, 1_700_000_000 + 3 * i))
    return root


@pytest.mark.parametrize("build", [build_sample_tree, build_wide_tree])
@pytest.mark.parametrize("lanes", [2, 3])
async def test_lanes_restore_the_same_tree(store: BlobStore, tmp_path: Path, build: object, lanes: int) -> None:
    src = build(tmp_path / "src")  # type: ignore[operator]
    await write_snapshot(
        store, snapshot_id="s", sandbox_id="x", provider="local", paths=[WORKSPACE], export=lambda p: tar_stream(src)
    )
    importer = LaneImporter(tmp_path / "out", lanes)
    await restore_snapshot(store, "s", importer)
    assert tree_entries(tmp_path / "out") == tree_entries(src)
    assert importer.rounds[0] == lanes
    assert len(importer.rounds) >= 2  # cross-lane hard links or directory fix-ups: never a single round


async def test_lanes_across_two_paths(store: BlobStore, tmp_path: Path) -> None:
    work, state = build_wide_tree(tmp_path / "work"), build_sample_tree(tmp_path / "state")
    trees = {WORKSPACE: work, "/home/sandbox/state": state}
    await write_snapshot(
        store, snapshot_id="two", sandbox_id="x", provider="local", paths=list(trees),
        export=lambda p: tar_stream(trees[p]),
    )  # fmt: skip
    outs: dict[str, Path] = {}

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        outs[path] = tmp_path / "out" / path.strip("/")
        await LaneImporter(outs[path])(path, stream)

    await restore_snapshot(store, "two", importer)
    assert tree_entries(outs[WORKSPACE]) == tree_entries(work)
    assert tree_entries(outs["/home/sandbox/state"]) == tree_entries(state)


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_archives_refused_in_lanes(store: BlobStore, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched")
    await put_raw_snapshot(store, "evil", HOSTILE[case](outside), [WORKSPACE])
    with pytest.raises(SnapshotCorrupt):
        await restore_snapshot(store, "evil", LaneImporter(tmp_path / "target"))
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
    assert (outside / "sentinel").read_text() == "untouched"


LANE_HOSTILE: dict[str, list[Member]] = {
    # "d" owns a lane; a symlink of the same name would let that lane write through it.
    "symlink-over-split-dir": [
        root(),
        member("workspace/d", tarfile.DIRTYPE),
        member("workspace/d/x", data=b"x"),
        member("workspace/d", tarfile.SYMTYPE, link="elsewhere"),
        member("workspace/d/y", data=b"y"),
    ],
    "file-over-split-dir": [
        root(),
        member("workspace/d", tarfile.DIRTYPE),
        member("workspace/e", tarfile.DIRTYPE),
        member("workspace/d", data=b"x"),
    ],
    "dir-over-symlink": [
        root(),
        member("workspace/sub", tarfile.DIRTYPE),
        member("workspace/s", tarfile.SYMTYPE, link="sub"),
        member("workspace/s", tarfile.DIRTYPE, mode=0o700),
    ],
}


@pytest.mark.parametrize("case", sorted(LANE_HOSTILE))
async def test_lane_conflicts_refused(store: BlobStore, tmp_path: Path, case: str) -> None:
    await put_raw_snapshot(store, "evil", LANE_HOSTILE[case], [WORKSPACE])
    with pytest.raises(UnsafeEntry):
        await restore_snapshot(store, "evil", LaneImporter(tmp_path / "target"))


async def test_corrupt_blob_fails_every_lane(store: BlobStore, tmp_path: Path) -> None:
    src = build_wide_tree(tmp_path / "src")
    manifest = await write_snapshot(
        store, snapshot_id="c", sandbox_id="x", provider="local", paths=[WORKSPACE], export=lambda p: tar_stream(src)
    )
    blob = bytearray(await store.get_bytes(manifest.blob_key))
    blob[len(blob) // 2] ^= 0xFF
    await store.put_bytes(manifest.blob_key, bytes(blob))
    failures: list[BaseException] = []

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        async for streams in stream.rounds(2):  # type: ignore[attr-defined]
            outcomes = await asyncio.gather(
                *(tar_extract(s, tmp_path / "out") for s in streams), return_exceptions=True
            )
            failures.extend(o for o in outcomes if isinstance(o, BaseException))
            if failures:
                raise failures[0]

    with pytest.raises(SnapshotCorrupt):
        await restore_snapshot(store, "c", importer)
    assert len(failures) == 2 and all(isinstance(f, SnapshotCorrupt) for f in failures)


async def test_a_lane_left_unread_is_an_unfinished_import(store: BlobStore, tmp_path: Path) -> None:
    src = build_wide_tree(tmp_path / "src")
    await write_snapshot(
        store, snapshot_id="u", sandbox_id="x", provider="local", paths=[WORKSPACE], export=lambda p: tar_stream(src)
    )

    async def lazy(path: str, stream: AsyncIterator[bytes]) -> None:
        async for streams in stream.rounds(2):  # type: ignore[attr-defined]
            await tar_extract(streams[0], tmp_path / "out")  # the other lane is never read
            break

    with pytest.raises(ProviderError, match="stopped before the end"):
        await restore_snapshot(store, "u", lazy)


async def test_reading_and_splitting_exclude_each_other(store: BlobStore, tmp_path: Path) -> None:
    src = build_wide_tree(tmp_path / "src")
    await write_snapshot(
        store, snapshot_id="x", sandbox_id="x", provider="local", paths=[WORKSPACE], export=lambda p: tar_stream(src)
    )

    async def both(path: str, stream: AsyncIterator[bytes]) -> None:
        await anext(stream)
        stream.rounds(2)  # type: ignore[attr-defined]

    with pytest.raises(RuntimeError, match="already being read"):
        await restore_snapshot(store, "x", both)


# -- the router alone -------------------------------------------------------------


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.linkname = link
    return entry


def lane(router: LaneRouter, entry: tarfile.TarInfo, loads: Sequence[int] = (0, 0), **kw: bool) -> int | None:
    route = router.route(entry, loads, **kw)
    return None if route is None else route.lane


def test_directories_take_turns_and_contents_follow_them() -> None:
    router = LaneRouter(2, WORKSPACE)
    assert lane(router, info(".", tarfile.DIRTYPE)) == 0
    first = lane(router, info("a", tarfile.DIRTYPE))
    assert lane(router, info("a/f")) == first
    second = lane(router, info("b", tarfile.DIRTYPE))
    assert {first, second} == {0, 1}
    assert lane(router, info("b/f")) == second
    assert lane(router, info("b/c", tarfile.DIRTYPE)) in (0, 1)
    assert lane(router, info("a/deep/er/file")) == first  # no entry for a/deep: a's lane


def test_a_directory_in_another_lane_brings_its_ancestors() -> None:
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    assert lane(router, info("src", tarfile.DIRTYPE), [9, 0]) == 1
    pkg = router.route(info("src/pkg", tarfile.DIRTYPE), [0, 9])
    assert pkg is not None and pkg.lane == 0
    assert [d.name for d in pkg.before] == ["src"]  # "." exists before any lane starts
    assert [d.name for d in router.finish()] == ["src", "."]


def test_busy_lanes_get_no_new_directories() -> None:
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    assert all(lane(router, info(f"d{i}", tarfile.DIRTYPE), [5 << 20, 0]) == 1 for i in range(5))


def test_only_children_of_split_directories_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "MAX_SPLIT_DIRS", 3)
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    a = lane(router, info("a", tarfile.DIRTYPE))
    b = lane(router, info("b", tarfile.DIRTYPE))
    # The owner map is full: new directories inherit their parent's lane, at any depth.
    assert lane(router, info("c", tarfile.DIRTYPE), [0, 9]) == 0
    assert lane(router, info("a/x", tarfile.DIRTYPE), [9, 9]) == a
    assert lane(router, info("b/y", tarfile.DIRTYPE), [9, 9]) == b


def test_hard_link_across_lanes_ends_the_round() -> None:
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    a = lane(router, info("a", tarfile.DIRTYPE), [9, 0])
    assert a == 1
    router.route(info("a/t"), [0, 0])
    assert lane(router, info("a/same", tarfile.LNKTYPE, "a/t")) == a
    assert lane(router, info("b", tarfile.DIRTYPE), [0, 9]) == 0
    link = info("b/l", tarfile.LNKTYPE, "a/t")
    assert lane(router, link) is None
    router.new_round()
    assert lane(router, link, target_ready=True) == 0
    # b was open when the round ended: its time is re-applied at the end, as is "."
    # (a went to another lane than its parent).
    assert [d.name for d in router.finish()] == ["b", "."]


def test_after_max_rounds_everything_goes_through_one_lane() -> None:
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    for _ in range(fanout.MAX_ROUNDS):
        router.new_round()
    assert router.serial
    assert {lane(router, info(f"d{i}", tarfile.DIRTYPE)) for i in range(4)} == {0}
    assert lane(router, info("d1/l", tarfile.LNKTYPE, "d2/x")) == 0


def test_one_lane_still_refuses_a_link_over_a_directory() -> None:
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    router.route(info("a", tarfile.DIRTYPE), [0, 0])
    for _ in range(fanout.MAX_ROUNDS):
        router.new_round()
    router.route(info("b", tarfile.DIRTYPE), [0, 0])
    with pytest.raises(UnsafeEntry, match="reuses a directory's name"):
        router.route(info("a", tarfile.SYMTYPE, "/etc"), [0, 0])


def test_parent_of_a_directory_in_another_lane_is_fixed_up() -> None:
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    assert lane(router, info("a", tarfile.DIRTYPE), [9, 0]) == 1  # inside "." (lane 0)
    router.route(info("a/f"), [0, 0])
    router.route(info("z"), [0, 0])
    assert [d.name for d in router.finish()] == ["."]


def test_fixups_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "MAX_FIXUPS", 2)
    router = LaneRouter(2, WORKSPACE)
    router.route(info(".", tarfile.DIRTYPE), [0, 0])
    for i in range(5):
        router.route(info(f"d{i}", tarfile.DIRTYPE), [0, 0])
        router.route(info(f"d{i}/e", tarfile.DIRTYPE), [0, 0])
        router.route(info(f"d{i}/e/f"), [0, 0])
    assert len(router.finish()) == 2
