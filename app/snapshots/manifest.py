"""Snapshot manifests (v1 here, v2 in ``chunked_manifest``), the blob keys and the archive layout.

A v1 snapshot is two blobs (v2 replaces the first by shared chunks, see ``chunked_manifest``):

* ``snapshots/<snapshot_id>.tar.zst``: one zstd frame (with its content checksum)
  holding one pax-format tar stream;
* ``snapshots/<snapshot_id>.json``: the manifest, written **last**. It is the
  commit point: a blob without a manifest is debris from a failed write, not a
  snapshot, and may be deleted.

Layout: each snapshot path is stored under a top-level directory named by the path
without its leading slash, in the order of ``paths``; the path itself is the first
member of its group (``workspace/``), its contents follow
(``workspace/src/main.py``), and groups never interleave. So
``tar -x -C / -f snapshot.tar`` restores every path where it was, and a reader can
cut the stream into one tar per path. Paths may not nest (``/a`` and ``/a/b``), so
every member belongs to exactly one path.
"""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FORMAT_VERSION: Literal[1] = 1
MAX_PATHS = 16
#: Largest manifest accepted when loading: a v1 one is about 1 KiB, a v2 one
#: ~130 bytes per chunk (~70 KiB for 512 MiB of workspace); 32 MiB bounds a crafted one.
MAX_MANIFEST_BYTES = 32 << 20

_SNAPSHOT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_REPO_RE = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
_SHA256_RE = r"^[0-9a-f]{64}$"


def validate_snapshot_id(snapshot_id: str) -> str:
    """Return ``snapshot_id`` if usable in a blob key, else raise ``ValueError``."""
    if not isinstance(snapshot_id, str) or not _SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise ValueError(f"invalid snapshot id {snapshot_id!r}: use 1-128 of [A-Za-z0-9_-], starting alphanumeric")
    return snapshot_id


def blob_key(snapshot_id: str) -> str:
    """Key of the archive blob."""
    return f"snapshots/{validate_snapshot_id(snapshot_id)}.tar.zst"


def manifest_key(snapshot_id: str) -> str:
    """Key of the manifest (the commit point)."""
    return f"snapshots/{validate_snapshot_id(snapshot_id)}.json"


def archive_prefix(path: str) -> str:
    """Top-level archive directory of a snapshot path: ``/workspace`` → ``workspace``."""
    return path.lstrip("/")


def validate_paths(paths: list[str]) -> list[str]:
    """Absolute, normalized, distinct, non-nested snapshot paths; ``ValueError`` otherwise."""
    if not 1 <= len(paths) <= MAX_PATHS:
        raise ValueError(f"a snapshot has 1 to {MAX_PATHS} paths")
    for path in paths:
        if not path.startswith("/") or path == "/" or posixpath.normpath(path) != path or "\0" in path:
            raise ValueError(f"snapshot path {path!r} must be absolute, normalized and not '/'")
    for i, a in enumerate(paths):
        for b in paths[i + 1 :]:
            if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
                raise ValueError(f"snapshot paths {a!r} and {b!r} overlap")
    return paths


class ManifestBase(BaseModel):
    """Fields every format's manifest has; ``model_dump_json()`` is what is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshot_id: str = Field(pattern=f"^{_SNAPSHOT_ID_RE.pattern}$")  # pattern= searches: anchor it
    sandbox_id: str = Field(min_length=1, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    #: ``owner/name`` of the repository in the workspace, when known.
    repo: str | None = Field(default=None, pattern=_REPO_RE, max_length=256)
    #: Provider the sandbox ran on (restore may use any provider).
    provider: str = Field(min_length=1, max_length=64)
    #: Absolute sandbox paths captured, in archive order (see the layout above).
    paths: list[str]
    compression: Literal["zstd"] = "zstd"
    #: Size of the uncompressed tar stream, bytes.
    raw_size: int = Field(ge=0)
    #: Bytes stored for the archive (v1: the blob; v2: all its chunks, shared ones included).
    compressed_size: int = Field(ge=0)
    #: Archive members that are not directories (files, hard links, symlinks).
    file_count: int = Field(ge=0)
    #: SHA-256, lowercase hex: of the blob in v1, of the uncompressed tar stream in v2.
    sha256: str = Field(pattern=_SHA256_RE)
    git_head: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
    reason: str = Field(default="manual", max_length=256)
    created_at: datetime
    #: Sandbox paths dropped or rewritten to keep credentials out (first 100).
    scrubbed: list[str] = Field(default_factory=list, max_length=100)
    #: Sandbox paths left out because a snapshot cannot hold them: FIFOs, devices (first 100).
    skipped: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return validate_paths(value)

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a timezone")
        return value.astimezone(UTC)

    @property
    def manifest_key(self) -> str:
        """Key of this manifest."""
        return manifest_key(self.snapshot_id)

    def to_bytes(self) -> bytes:
        """The stored form (JSON, UTF-8)."""
        return self.model_dump_json(indent=2).encode()


class SnapshotManifest(ManifestBase):
    """The v1 manifest: one blob."""

    format_version: Literal[1] = FORMAT_VERSION

    @property
    def blob_key(self) -> str:
        """Key of this snapshot's archive blob."""
        return blob_key(self.snapshot_id)
