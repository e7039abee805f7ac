"""Reading what a snapshot stored, in either format, for tests that look inside the archive."""

from __future__ import annotations

from typing import Any

import zstandard

from app.snapshots.chunked_manifest import ChunkedManifest
from app.snapshots.reader import load_manifest


async def stored_keys(blobs: Any, snapshot_id: str) -> list[str]:
    """The blobs holding a snapshot's archive: v1's one blob, or v2's chunks in order."""
    manifest = await load_manifest(blobs, snapshot_id)
    return [c.key for c in manifest.chunks] if isinstance(manifest, ChunkedManifest) else [manifest.blob_key]


async def stored_archive(blobs: Any, snapshot_id: str) -> bytes:
    """The uncompressed tar stream exactly as stored (whole, in memory: small test snapshots only)."""
    parts = []
    for key in await stored_keys(blobs, snapshot_id):
        parts.append(zstandard.ZstdDecompressor().decompressobj().decompress(await blobs.get_bytes(key)))
    return b"".join(parts)
