"""Reading a snapshot back: manifest → verified, decompressed, sanitized tar streams.

Contract for consumers (the restore flow):

* The blob (v1) or the chunk sequence (v2) is streamed once. Its size and SHA-256 are
  checked *while* streaming (v2: each chunk before it is used), but the whole can only
  be confirmed after the last byte. Member data therefore reaches the importer before
  the snapshot is known to be intact.
* The final end-of-archive marker is held back until the blob is verified. A corrupt
  or truncated snapshot raises ``SnapshotCorrupt`` from the stream *instead of*
  ending it, so ``tar -x`` fed by it fails too ("unexpected EOF"), even if the
  importer swallowed the exception.
* Hence: whoever restored from a stream that raised must treat the target as
  poisoned and delete it (DESIGN 8: "the half-restored sandbox is deleted").
  ``restore_snapshot`` re-raises the snapshot's error even if the importer hid it.

Every member is re-checked by ``EntryGuard`` (see ``safe_tar``) and re-emitted as a
fresh pax header plus its data: nothing in a stored header reaches the importer
unexamined. Verification and decompression live in ``decoder`` and ``chunked_decoder``; the per-path streams
(and their split into concurrent lanes) in ``sections`` and ``fanout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from pydantic import ValidationError

from app.errors import NotFound, PayloadTooLarge, ProviderError, SnapshotCorrupt, SnapshotNotFound
from app.snapshots.chunked_decoder import ChunkedDecoder
from app.snapshots.chunked_manifest import ChunkedManifest
from app.snapshots.decoder import VerifyingDecoder, snapshot_corrupt
from app.snapshots.manifest import (
    MAX_MANIFEST_BYTES,
    ManifestBase,
    SnapshotManifest,
    archive_prefix,
    blob_key,
    manifest_key,
)
from app.snapshots.safe_tar import EntryGuard, UnsafeEntry, normalize_name
from app.snapshots.sections import MAX_ENTRIES, Section, SectionPump, emit_member
from app.snapshots.tarstream import TarEmitter, TarFormatError, TarReader
from app.storage.blobs.base import BlobStore

MAX_TRAILING_BYTES = 1 << 20

Importer = Callable[[str, AsyncIterator[bytes]], Awaitable[None]]
#: A manifest of any readable format.
Manifest = SnapshotManifest | ChunkedManifest
_MODELS: dict[int, type[SnapshotManifest] | type[ChunkedManifest]] = {1: SnapshotManifest, 2: ChunkedManifest}
#: Chunks a v2 restore fetches at once (each up to 4 MiB held until its turn).
RESTORE_CHUNKS_AHEAD = 4


async def load_manifest(store: BlobStore, snapshot_id: str) -> Manifest:
    """Load and validate the manifest of ``snapshot_id``.

    Raises:
        SnapshotNotFound: no manifest (the snapshot does not exist).
        SnapshotCorrupt: unreadable, of another format version, or of another snapshot.
    """
    try:
        key = manifest_key(snapshot_id)
    except ValueError:
        raise SnapshotNotFound(f"snapshot {snapshot_id!r} not found", snapshot_id=snapshot_id) from None
    try:
        raw = await store.get_bytes(key, limit=MAX_MANIFEST_BYTES)
    except NotFound:
        raise SnapshotNotFound(f"snapshot {snapshot_id!r} not found", snapshot_id=snapshot_id) from None
    except PayloadTooLarge:
        raise SnapshotCorrupt(f"snapshot {snapshot_id!r}: manifest is implausibly large") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise SnapshotCorrupt(f"snapshot {snapshot_id!r}: manifest is not valid JSON") from None
    if not isinstance(data, dict):
        raise SnapshotCorrupt(f"snapshot {snapshot_id!r}: manifest is not a JSON object")
    version = data.get("format_version")
    model = _MODELS.get(version) if isinstance(version, int) else None
    if model is None:
        raise SnapshotCorrupt(
            f"snapshot {snapshot_id!r} has format version {version!r}; this service reads versions 1 and 2"
        )
    try:
        manifest = model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise SnapshotCorrupt(f"snapshot {snapshot_id!r}: invalid manifest: {problems}") from None
    if manifest.snapshot_id != snapshot_id:
        raise SnapshotCorrupt(
            f"snapshot {snapshot_id!r}: its manifest belongs to snapshot {manifest.snapshot_id!r}",
            snapshot_id=snapshot_id,
        )
    return manifest


async def delete_snapshot(store: BlobStore, snapshot_id: str) -> bool:
    """Delete a snapshot (manifest first, so it stops existing at once); True if it existed.

    A blob left without manifest by a crashed write is removed as well.
    """
    try:
        keys = manifest_key(snapshot_id), blob_key(snapshot_id)
    except ValueError:
        return False
    existed = await store.delete(keys[0])
    await store.delete(keys[1])
    return existed


async def read_snapshot(
    store: BlobStore, snapshot: str | Manifest, *, allow_external_symlinks: bool = False
) -> AsyncGenerator[bytes, None]:
    """The whole snapshot as one sanitized tar stream, in the stored layout.

    Names keep their path prefix (``workspace/src/x``), so ``tar -x -C /`` restores
    every path in place. See the module docstring for the error contract.
    """
    manifest = snapshot if isinstance(snapshot, ManifestBase) else await load_manifest(store, snapshot)
    prefixes = [archive_prefix(p) for p in manifest.paths]
    emitter = TarEmitter()
    members = _members(store, manifest, allow_external_symlinks)
    async with contextlib.aclosing(members):
        async for index, info, reader in members:
            prefix = prefixes[index]
            info.name = prefix if info.name == "." else f"{prefix}/{info.name}"
            if info.type == tarfile.LNKTYPE:
                info.linkname = f"{prefix}/{info.linkname}"
            async for batch in emit_member(emitter, info, reader, manifest):
                yield batch
    emitter.finish()
    yield emitter.take()


async def restore_snapshot(
    store: BlobStore,
    snapshot: str | Manifest,
    import_tar: Importer,
    *,
    allow_external_symlinks: bool = False,
    chunks_ahead: int = RESTORE_CHUNKS_AHEAD,
) -> Manifest:
    """Restore each snapshot path through ``import_tar(path, stream)``, in order.

    ``import_tar`` is typically ``lambda p, s: provider.import_tar(ref, p, s)``; each
    stream is a complete tar of one path with names relative to it (``./``,
    ``src/x``), as ``Provider.export_tar`` produced them. An importer that can run
    several extractions at once may call ``s.rounds(lanes)`` instead of reading it
    (``sections``, ``fanout``). Returns the manifest when every path was imported and
    the blob verified.

    Raises:
        SnapshotNotFound / SnapshotCorrupt / UnsafeEntry: see ``load_manifest`` and the
            module docstring; raised even if ``import_tar`` swallowed it. The target
            must then be discarded.
        ProviderError: ``import_tar`` returned without reading its whole stream.
        StorageUnavailable: the blob store failed mid-way (target also incomplete).
    """
    manifest = snapshot if isinstance(snapshot, ManifestBase) else await load_manifest(store, snapshot)
    pump = SectionPump(_members(store, manifest, allow_external_symlinks, chunks_ahead), manifest)
    async with contextlib.aclosing(pump.members):
        for index, path in enumerate(manifest.paths):
            stream = Section(pump, index)
            try:
                await import_tar(path, stream)
            except Exception as exc:
                if pump.error is not None and pump.error is not exc:
                    raise pump.error from exc
                raise
            finally:
                await stream.aclose()
            if pump.error is not None:
                raise pump.error
            if index not in pump.finished:
                raise ProviderError(f"the import of {path} stopped before the end of its snapshot stream", path=path)
    return manifest


async def verify_snapshot(store: BlobStore, snapshot_id: str, *, allow_external_symlinks: bool = False) -> Manifest:
    """Stream and check the whole snapshot without extracting it; return its manifest.

    Checks what a restore checks: manifest, size, SHA-256, zstd frame checksum,
    tar structure, every member against the safety rules, member count, raw size.
    """
    manifest = await load_manifest(store, snapshot_id)
    members = _members(store, manifest, allow_external_symlinks)
    async with contextlib.aclosing(members):
        async for _index, _info, _reader in members:
            pass  # the reader skips (and so decompresses and checks) the member's data
    return manifest


async def _members(
    store: BlobStore, manifest: Manifest, allow_external_symlinks: bool, chunks_ahead: int = RESTORE_CHUNKS_AHEAD
) -> AsyncGenerator[tuple[int, tarfile.TarInfo, TarReader], None]:
    """Checked members as (path index, cleaned header with a path-relative name, reader).

    The consumer reads the member's data from the reader before asking for the next.
    Completes only after the blob and the manifest's counts are verified.
    """
    blob: VerifyingDecoder | ChunkedDecoder
    if isinstance(manifest, ChunkedManifest):
        blob = ChunkedDecoder(store, manifest, concurrency=chunks_ahead)
    else:
        blob = VerifyingDecoder(store, manifest)
    try:
        reader = TarReader(blob.chunks())
        prefixes = [archive_prefix(p) for p in manifest.paths]
        guards = [EntryGuard(p, allow_external_symlinks=allow_external_symlinks) for p in manifest.paths]
        current = -1
        file_count = 0
        for count in range(MAX_ENTRIES * len(prefixes) + 1):
            try:
                info = await reader.next()
            except TarFormatError as exc:
                raise snapshot_corrupt(manifest, str(exc)) from exc
            if info is None:
                break
            if count % 256 == 255:
                await asyncio.sleep(0)
            try:
                name = normalize_name(info.name)
            except UnsafeEntry as exc:
                raise UnsafeEntry(_sandbox_path(info.name), exc.reason) from None
            index, rel = _locate(name, prefixes, current)
            if index != current:
                if index != current + 1 or rel != ".":
                    raise snapshot_corrupt(
                        manifest, f"member {name!r} is out of order (each path's group starts with its root)"
                    )
                current = index
            info.name = rel
            if info.type == tarfile.LNKTYPE:
                try:
                    target = normalize_name(info.linkname)
                except UnsafeEntry as exc:
                    raise UnsafeEntry(
                        _sandbox_path(name), f"hard link target {info.linkname!r}: {exc.reason}"
                    ) from None
                target_index, target_rel = _locate(target, prefixes, current, strict=False)
                if target_index != index:
                    raise UnsafeEntry(_sandbox_path(name), f"hard link to {info.linkname!r} outside its path")
                info.linkname = target_rel
            clean = guards[index].check(info)
            if clean.type != tarfile.DIRTYPE:
                file_count += 1
            yield index, clean, reader
        else:
            raise snapshot_corrupt(manifest, "too many members")
        try:
            await reader.drain(MAX_TRAILING_BYTES)
        except TarFormatError as exc:
            raise snapshot_corrupt(manifest, str(exc)) from exc
        await blob.finish()
        if current != len(prefixes) - 1:
            raise snapshot_corrupt(manifest, f"the archive lacks {manifest.paths[current + 1]}")
        if file_count != manifest.file_count:
            raise snapshot_corrupt(manifest, f"{file_count} files instead of {manifest.file_count}")
    finally:
        await blob.aclose()


def _locate(name: str, prefixes: list[str], current: int, *, strict: bool = True) -> tuple[int, str]:
    """(path index, name relative to that path) of an archive member name."""
    order = [current, current + 1] if current >= 0 else []
    for index in [*(i for i in order if 0 <= i < len(prefixes)), *range(len(prefixes))]:
        prefix = prefixes[index]
        if name == prefix:
            return index, "."
        if name.startswith(prefix + "/"):
            return index, name[len(prefix) + 1 :]
    if not strict:
        return -1, name
    raise UnsafeEntry(_sandbox_path(name), "outside every snapshot path")


def _sandbox_path(archive_name: str) -> str:
    # The layout maps archive name "workspace/x" to sandbox path "/workspace/x".
    return archive_name if archive_name.startswith("/") else f"/{archive_name}"
