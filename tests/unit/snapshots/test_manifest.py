"""The v1 manifest model and the snapshot keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from app.snapshots.manifest import SnapshotManifest, archive_prefix, blob_key, manifest_key, validate_paths


def fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "snapshot_id": "snap_01",
        "sandbox_id": "sbx_1",
        "provider": "local",
        "paths": ["/workspace", "/home/sandbox/.local/share/opencode"],
        "raw_size": 10240,
        "compressed_size": 300,
        "file_count": 3,
        "sha256": "0" * 64,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    base.update(overrides)
    return base


def test_roundtrip_json() -> None:
    manifest = SnapshotManifest(**fields(repo="octo/repo", git_head="ab" * 20, session_id="s"))
    again = SnapshotManifest.model_validate_json(manifest.to_bytes())
    assert again == manifest
    assert again.format_version == 1 and again.compression == "zstd"
    assert manifest.blob_key == "snapshots/snap_01.tar.zst"
    assert manifest.manifest_key == "snapshots/snap_01.json"


def test_created_at_normalized_to_utc() -> None:
    manifest = SnapshotManifest(**fields(created_at=datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))))
    assert manifest.created_at == datetime(2024, 1, 1, tzinfo=UTC) and manifest.created_at.tzinfo == UTC


@pytest.mark.parametrize(
    "overrides",
    [
        {"snapshot_id": "../x"},
        {"snapshot_id": ""},
        {"snapshot_id": "a.b"},
        {"sha256": "XYZ"},
        {"repo": "no-slash"},
        {"git_head": "main"},
        {"paths": []},
        {"paths": ["relative"]},
        {"paths": ["/a", "/a/b"]},
        {"paths": ["/a/../b"]},
        {"paths": ["/"]},
        {"raw_size": -1},
        {"created_at": datetime(2024, 1, 1)},
        {"format_version": 2},
        {"unknown": 1},
    ],
)
def test_invalid(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SnapshotManifest(**fields(**overrides))


def test_keys_and_layout() -> None:
    assert blob_key("s1") == "snapshots/s1.tar.zst"
    assert manifest_key("s1") == "snapshots/s1.json"
    with pytest.raises(ValueError):
        blob_key("s/1")
    assert archive_prefix("/home/sandbox/.local/share/opencode") == "home/sandbox/.local/share/opencode"
    assert validate_paths(["/workspace", "/workspace2"]) == ["/workspace", "/workspace2"]
