"""The on-disk state of local sandboxes: refs, meta, uid allocation, init records."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.errors import ProviderUnavailable, SandboxNotFound
from app.providers.base import Resources
from app.providers.local.store import InitRecord, LocalStore, SandboxMeta, new_ref, remove_tree

PRIVILEGED = os.geteuid() == 0


def meta(**overrides: object) -> SandboxMeta:
    values: dict[str, object] = {
        "ref": new_ref(), "sandbox_id": "sbx_1", "labels": {"a": "b"}, "image": "local", "env": {"K": "v"},
        "network": "host", "command": None, "resources": Resources(memory_mb=64),
        "effective": Resources(memory_mb=64), "created_at": datetime.now(UTC),
    }  # fmt: skip
    values.update(overrides)
    return SandboxMeta(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "local")
    store.prepare()
    return store


def etc(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir(exist_ok=True)
    (directory / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (directory / "group").write_text("root:x:0:\n")
    return directory


def test_create_lays_out_the_sandbox(store: LocalStore, tmp_path: Path) -> None:
    created = store.create(meta(), uid_range=None, etc_dir=etc(tmp_path))
    paths = store.paths(created.ref)
    assert all(p.is_dir() for p in (paths.workspace, paths.home, paths.tmp))
    assert oct(paths.workspace.stat().st_mode & 0o777) == "0o700"
    assert "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh" in paths.passwd.read_text()
    assert store.load_meta(created.ref) == created
    assert [m.ref for m in store.all_metas()] == [created.ref]


@pytest.mark.skipif(not PRIVILEGED, reason="chown to sandbox uids needs root")
def test_uids_are_the_lowest_free_in_range(store: LocalStore, tmp_path: Path) -> None:
    uid_range = range(299_000, 299_002)
    first = store.create(meta(), uid_range=uid_range, etc_dir=etc(tmp_path))
    second = store.create(meta(), uid_range=uid_range, etc_dir=etc(tmp_path))
    assert (first.uid, second.uid) == (299_000, 299_001)
    assert store.paths(first.ref).workspace.stat().st_uid == 299_000
    with pytest.raises(ProviderUnavailable):
        store.create(meta(), uid_range=uid_range, etc_dir=etc(tmp_path))
    store.remove(first.ref)
    assert store.create(meta(), uid_range=uid_range, etc_dir=etc(tmp_path)).uid == 299_000


@pytest.mark.parametrize("ref", ["../../etc", "lcl-XYZ", "", "lcl-0123456789ab/.."])
def test_malformed_refs_do_not_exist(store: LocalStore, ref: str) -> None:
    with pytest.raises(SandboxNotFound):
        store.load_meta(ref)


def test_unknown_ref_is_not_found(store: LocalStore) -> None:
    with pytest.raises(SandboxNotFound):
        store.load_meta("lcl-0123456789ab")


def test_half_created_dirs_are_ignored(store: LocalStore) -> None:
    (store.sandboxes / "lcl-0123456789ab").mkdir()
    (store.sandboxes / "lcl-ba9876543210").mkdir()
    (store.sandboxes / "lcl-ba9876543210" / "meta.json").write_text("{not json")
    assert store.all_metas() == []


def test_init_record_round_trip(store: LocalStore, tmp_path: Path) -> None:
    created = store.create(meta(), uid_range=None, etc_dir=etc(tmp_path))
    assert store.load_init(created.ref) is None
    record = InitRecord(pid=123, start_time=456, boot_id="b", cgroups=["/cg/x"])
    store.save_init(created.ref, record)
    store.paths(created.ref).init_exit.write_text("3\n")
    assert store.load_init(created.ref) == record
    assert store.init_exit_status(created.ref) == 3
    store.clear_init(created.ref)
    assert store.load_init(created.ref) is None and store.init_exit_status(created.ref) is None


def test_remove_tree_copes_with_read_only_directories(tmp_path: Path) -> None:
    locked = tmp_path / "box" / "locked"
    locked.mkdir(parents=True)
    (locked / "file").write_text("x")
    locked.chmod(0o500)
    remove_tree(tmp_path / "box")
    assert not (tmp_path / "box").exists()
