"""Writing a snapshot: provider tar streams → checked, scrubbed tar → zstd → sha256 → blob → manifest.

Everything streams: one member header or data piece at a time is parsed from the
provider's export, re-emitted into a ~1 MiB batch, compressed in a worker thread
(zstd keeps its own window, a few MiB at level 3), hashed, and handed to
``BlobStore.put_stream`` (which buffers at most two multipart parts for S3 and
nothing for the directory store). Nothing is written to the service's disk for S3.

The manifest is written only after the blob upload succeeded; it is the commit point.
On any failure before that (provider error, unsafe entry, storage outage,
cancellation) the partial blob and any manifest are deleted best-effort and the
error propagates: a snapshot without a manifest does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tarfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import zstandard

from app.errors import BadRequest, Conflict, ProviderError, StorageUnavailable
from app.snapshots.manifest import SnapshotManifest, archive_prefix, blob_key, manifest_key, validate_paths
from app.snapshots.manifest import validate_snapshot_id as _validate_id
from app.snapshots.plain import PlainHeader, encode_plain
from app.snapshots.safe_tar import SPECIAL_TYPES, EntryGuard, UnsafeEntry, clamp_mode, normalize_name
from app.snapshots.scrub import (
    MAX_REWRITE_BYTES,
    ScrubAction,
    SecretScanner,
    classify,
    scrub_git_config,
    scrub_url_text,
)
from app.snapshots.tarstream import TarEmitter, TarFormatError, TarReader
from app.storage.blobs.base import BackgroundCleanup, BlobStore

#: Raw tar bytes gathered before one compression step.
BATCH_BYTES = 1 << 20
#: Members accepted per snapshot path; far above any real workspace.
MAX_ENTRIES = 10_000_000
#: Bytes tolerated after a provider's end-of-archive marker (tar pads to 10 KiB records).
MAX_TRAILING_BYTES = 1 << 20
#: Entries listed in the manifest's ``scrubbed`` and ``skipped`` fields.
MAX_LISTED = 100

Exporter = Callable[[str], AsyncIterator[bytes]]


async def write_snapshot(
    store: BlobStore,
    *,
    snapshot_id: str,
    sandbox_id: str,
    provider: str,
    paths: Sequence[str],
    export: Exporter,
    session_id: str | None = None,
    repo: str | None = None,
    git_head: str | None = None,
    reason: str = "manual",
    secret_values: Iterable[str] = (),
    allow_external_symlinks: bool = False,
    compression_level: int = 3,
    compression_threads: int = 0,
) -> SnapshotManifest:
    """Capture ``paths`` through ``export(path)`` and store them as snapshot ``snapshot_id``.

    ``export`` is typically ``lambda p: provider.export_tar(ref, p)``; it is called once
    per path, in order, and each stream is closed after use. ``secret_values`` are
    credentials the caller knows (e.g. the VCS token it injected): a member containing
    one is refused. Returns the manifest once it is stored.

    Raises:
        BadRequest: invalid id or paths.
        Conflict: the snapshot already exists.
        UnsafeEntry: the sandbox holds an entry a snapshot must not carry (names it).
        ProviderError: an export was not a valid tar stream (plus whatever ``export`` raises).
        StorageUnavailable: the blob store failed.
    """
    path_list = await check_new_snapshot(store, snapshot_id, paths)
    builder = ArchiveBuilder(path_list, export, SecretScanner(secret_values), allow_external_symlinks)
    compressor = _Compressor(compression_level, compression_threads)
    upload = compressor.stream(builder.stream())
    cleanup = BackgroundCleanup()
    try:
        written = await store.put_stream(blob_key(snapshot_id), upload)
        if written != compressor.size:
            raise StorageUnavailable(f"blob store stored {written} of {compressor.size} bytes")
        manifest = SnapshotManifest(
            snapshot_id=snapshot_id,
            sandbox_id=sandbox_id,
            session_id=session_id,
            repo=repo,
            provider=provider,
            compressed_size=compressor.size,
            sha256=compressor.sha256.hexdigest(),
            git_head=git_head,
            reason=reason,
            created_at=datetime.now(UTC),
            **builder.manifest_fields(),
        )
        await store.put_bytes(manifest_key(snapshot_id), manifest.to_bytes())
    except BaseException:
        await cleanup.run(f"discard partial snapshot {snapshot_id}", _discard(store, snapshot_id))
        raise
    finally:
        await upload.aclose()
    return manifest


async def check_new_snapshot(store: BlobStore, snapshot_id: str, paths: Sequence[str]) -> list[str]:
    """The validated paths of a snapshot about to be written; ``BadRequest`` / ``Conflict`` otherwise."""
    try:
        _validate_id(snapshot_id)
        path_list = validate_paths(list(paths))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if await store.exists(manifest_key(snapshot_id)):
        raise Conflict(f"snapshot {snapshot_id!r} already exists", snapshot_id=snapshot_id)
    return path_list


async def _discard(store: BlobStore, snapshot_id: str) -> None:
    # Manifest first: if its write failed only in appearance, the snapshot must not survive.
    for key in (manifest_key(snapshot_id), blob_key(snapshot_id)):
        with contextlib.suppress(Exception):
            await store.delete(key)


class _Compressor:
    """zstd (one frame, with content checksum) plus size and sha256 of the output."""

    def __init__(self, level: int, threads: int) -> None:
        self._cobj = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compressobj()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def _step(self, raw: bytes | None) -> bytes:
        # Runs in a worker thread: zstd and sha256 release the GIL on large buffers.
        out: bytes = self._cobj.compress(raw) if raw is not None else self._cobj.flush()
        self.sha256.update(out)
        self.size += len(out)
        return out

    async def stream(self, raw_batches: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """Compressed bytes of ``raw_batches``; closes it when done or abandoned."""
        async with contextlib.aclosing(raw_batches):
            async for raw in raw_batches:
                out = await asyncio.to_thread(self._step, raw)
                if out:
                    yield out
        yield await asyncio.to_thread(self._step, None)


class ArchiveBuilder:
    """Re-emits the provider's exports as one checked, scrubbed tar stream (see manifest layout)."""

    def __init__(self, paths: list[str], export: Exporter, scanner: SecretScanner, allow_external: bool) -> None:
        self._paths = paths
        self._export = export
        self._scanner = scanner
        self._allow_external = allow_external
        self.emitter = TarEmitter()
        self.file_count = 0
        self.scrubbed: list[str] = []
        self.skipped: list[str] = []
        self._entry = ""

    def manifest_fields(self) -> dict[str, Any]:
        """What the manifest says about the archive once it is complete (any format)."""
        return {
            "paths": self._paths,
            "raw_size": self.emitter.size,
            "file_count": self.file_count,
            "scrubbed": self.scrubbed[:MAX_LISTED],
            "skipped": self.skipped[:MAX_LISTED],
        }

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """Raw tar bytes in batches of about ``BATCH_BYTES``."""
        for path in self._paths:
            source = self._export(path)
            try:
                async with contextlib.aclosing(self._section(path, source)) as section:
                    async for batch in section:
                        yield batch
            except TarFormatError as exc:
                raise ProviderError(f"the export of {path} is not a valid tar stream: {exc}", path=path) from exc
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()
        self.emitter.finish()
        yield self.emitter.take()

    def _header(self, info: tarfile.TarInfo, sandbox_path: str) -> None:
        self._entry = sandbox_path
        self._scanner.feed(self.emitter.header(info), sandbox_path)

    def _data(self, piece: bytes) -> None:
        self._scanner.feed(piece, self._entry)
        self.emitter.data(piece)

    async def _section(self, path: str, source: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        reader = TarReader(source)
        guard = EntryGuard(path, allow_external_symlinks=self._allow_external)
        prefix = archive_prefix(path)
        dropped: set[str] = set()
        root_written = False
        for index in range(MAX_ENTRIES):
            member = await reader.next_plain()
            if member is None:
                break
            if index % 256 == 255:
                await asyncio.sleep(0)  # many tiny members can arrive in one chunk: stay fair
            if isinstance(member, PlainHeader) and root_written and self._plain_header(member, guard, path, prefix):
                if member.regular:
                    left = member.size
                    for _ in range(left):  # bounded: every piece holds >= 1 byte (or read raises)
                        if not left:
                            break
                        piece = await reader.read(BATCH_BYTES)
                        left -= len(piece)
                        self._data(piece)
                        if self.emitter.pending >= BATCH_BYTES:
                            yield self.emitter.take()
                    self.emitter.end_member(member.size)
                    self.file_count += 1
                if self.emitter.pending >= BATCH_BYTES:
                    yield self.emitter.take()
                continue
            info = member.tarinfo() if isinstance(member, PlainHeader) else member  # the general path decides
            if info.type in SPECIAL_TYPES:
                rel = normalize_name(info.name)
                dropped.add(rel)  # a hard link to it could not be restored either
                self._note(self.skipped, f"{path}/{rel}")
                continue
            clean = guard.check(info)
            rel = clean.name
            if rel == ".":
                if not root_written:  # a repeated root entry adds nothing
                    clean.name = prefix
                    self._header(clean, path)
                    root_written = True
                continue
            if not root_written:
                self._write_synthetic_root(prefix, path)
                root_written = True
            sandbox_path = f"{path}/{rel}"
            action = classify(sandbox_path)
            if clean.type == tarfile.LNKTYPE and clean.linkname in dropped:
                action = ScrubAction.DROP  # a second name of a dropped credential file
            if action is not ScrubAction.KEEP and clean.type != tarfile.DIRTYPE:
                if action is ScrubAction.DROP or clean.type != tarfile.REGTYPE:
                    dropped.add(rel)
                    self._note(self.scrubbed, sandbox_path)
                    continue
                content = await _read_small(reader, clean.size)
                if content is None:
                    if action is ScrubAction.GIT_CONFIG:
                        raise UnsafeEntry(sandbox_path, f"git config larger than {MAX_REWRITE_BYTES} bytes")
                    dropped.add(rel)
                    self._note(self.scrubbed, sandbox_path)
                    continue
                scrubbed = scrub_git_config(content) if action is ScrubAction.GIT_CONFIG else scrub_url_text(content)
                if scrubbed != content:
                    self._note(self.scrubbed, sandbox_path)
                clean.size = len(scrubbed)
                clean.name = f"{prefix}/{rel}"
                self._header(clean, sandbox_path)
                self._data(scrubbed)
                self.emitter.end_member(len(scrubbed))
                self.file_count += 1
                continue
            clean.name = f"{prefix}/{rel}"
            if clean.type == tarfile.LNKTYPE:
                clean.linkname = f"{prefix}/{clean.linkname}"
            self._header(clean, sandbox_path)
            if clean.type == tarfile.REGTYPE:
                for _ in range(clean.size + 1):  # bounded: every piece holds >= 1 byte
                    piece = await reader.read(BATCH_BYTES)
                    if not piece:
                        break
                    self._data(piece)
                    if self.emitter.pending >= BATCH_BYTES:
                        yield self.emitter.take()
                self.emitter.end_member(clean.size)
            if clean.type != tarfile.DIRTYPE:
                self.file_count += 1
            if self.emitter.pending >= BATCH_BYTES:
                yield self.emitter.take()
        else:
            raise UnsafeEntry(path, f"more than {MAX_ENTRIES} entries")
        if not root_written:
            self._write_synthetic_root(prefix, path)
        await reader.drain(MAX_TRAILING_BYTES)
        if self.emitter.pending >= BATCH_BYTES:
            yield self.emitter.take()

    def _plain_header(self, member: PlainHeader, guard: EntryGuard, path: str, prefix: str) -> bool:
        """Check and write the header of a plain member, unless it needs the general path (False).

        The same checks and the same header bytes as the general path, without a
        ``TarInfo``: that path costs most of a snapshot's CPU on many small files.
        """
        directory = not member.regular
        rel = guard.check_plain(member.name, directory=directory)
        if rel == ".":
            return False
        sandbox_path = f"{path}/{rel}"
        # Directories are kept whatever their name (as below); files may be scrubbed.
        if member.regular and classify(sandbox_path) is not ScrubAction.KEEP:
            return False
        header = encode_plain(member, f"{prefix}/{rel}", clamp_mode(member.mode, directory=directory))
        if header is None:
            return False
        self._entry = sandbox_path
        self._scanner.feed(header, sandbox_path)
        self.emitter.raw_header(header)
        return True

    def _write_synthetic_root(self, prefix: str, path: str) -> None:
        # The export had no "." entry: the path still gets its own directory member.
        root = tarfile.TarInfo(prefix)
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        root.mtime = int(time.time())
        self._header(root, path)

    @staticmethod
    def _note(listing: list[str], sandbox_path: str) -> None:
        if len(listing) < MAX_LISTED:
            listing.append(sandbox_path)


async def _read_small(reader: TarReader, size: int) -> bytes | None:
    """The whole data of the current member if at most ``MAX_REWRITE_BYTES``, else ``None``."""
    if size > MAX_REWRITE_BYTES:
        return None
    parts: list[bytes] = []
    for _ in range(size + 1):  # bounded: every piece holds >= 1 byte
        piece = await reader.read(BATCH_BYTES)
        if not piece:
            break
        parts.append(piece)
    return b"".join(parts)
