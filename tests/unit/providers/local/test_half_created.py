"""A create killed mid-layout leaves a sandbox dir without a meta; the next listing removes it."""

from __future__ import annotations

from pathlib import Path

from app.providers.local.store import LocalStore


def test_dirs_without_a_meta_are_swept_and_complete_ones_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "local")
    store.prepare()
    half = store.sandboxes / "lcl-0123456789ab"
    (half / "workspace").mkdir(parents=True)
    (half / "workspace" / "big.bin").write_bytes(b"x" * 1024)
    broken = store.sandboxes / "lcl-ba9876543210"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    unrelated = store.sandboxes / "README"
    unrelated.write_text("not a sandbox")
    assert sorted(store.sweep_half_created()) == ["lcl-0123456789ab", "lcl-ba9876543210"]
    assert not half.exists() and not broken.exists() and unrelated.exists()
    assert store.sweep_half_created() == []
