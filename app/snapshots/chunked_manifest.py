"""Snapshot format v2: the tar stream cut into content-defined chunks stored once each.

* ``chunks/<sha256 of the plaintext chunk>``: one zstd frame per chunk, shared by
  every snapshot (and repo image) whose stream contains that chunk;
* ``snapshots/<snapshot_id>.json``: the manifest, listing the chunk hashes in stream
  order, written **last** (the commit point, as in v1).

The tar stream inside is exactly v1's (same layout, scrubbing and checks); only its
storage differs. Deleting a snapshot deletes its manifest only: chunks are removed
by garbage collection once no manifest lists them (``app.services.chunk_gc``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.snapshots.manifest import ManifestBase

CHUNK_PREFIX = "chunks/"
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Most chunks one manifest may list (~270 GiB of stream at ~1.1 MiB each).
MAX_CHUNKS = 1 << 18


def chunk_key(sha256: str) -> str:
    """Blob key of the chunk whose plaintext has this SHA-256."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"invalid chunk hash {sha256!r}")
    return CHUNK_PREFIX + sha256


class ChunkRef(BaseModel):
    """One chunk of the stream, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: SHA-256 of the chunk's plaintext (the tar bytes), lowercase hex; also its key.
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Plaintext bytes.
    size: int = Field(ge=1)
    #: Compressed (stored) bytes.
    stored_size: int = Field(ge=1)

    @property
    def key(self) -> str:
        return chunk_key(self.sha256)


class ChunkedManifest(ManifestBase):
    """The v2 manifest. ``sha256`` is the whole tar stream's; ``compressed_size`` the sum of its chunks'."""

    format_version: Literal[2] = 2
    chunks: list[ChunkRef] = Field(max_length=MAX_CHUNKS)
    #: Compressed bytes of the chunks this snapshot uploaded (the others were already stored).
    stored_bytes: int = Field(ge=0)

    @model_validator(mode="after")
    def _sizes_add_up(self) -> ChunkedManifest:
        if sum(c.size for c in self.chunks) != self.raw_size:
            raise ValueError("the chunk sizes do not add up to raw_size")
        if sum(c.stored_size for c in self.chunks) != self.compressed_size:
            raise ValueError("the chunks' stored sizes do not add up to compressed_size")
        if self.stored_bytes > self.compressed_size:
            raise ValueError("stored_bytes exceeds compressed_size")
        return self

    def to_bytes(self) -> bytes:
        """The stored form: compact JSON (the chunk list dominates its size)."""
        return self.model_dump_json().encode()
