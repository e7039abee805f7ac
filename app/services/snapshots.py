"""Snapshots of a sandbox to the blob store, and restores into a new sandbox.

The archive format lives in ``app.snapshots``; this service decides what is
captured, keeps the records, and guarantees the invariants around it:

* one snapshot of a sandbox at a time (per-sandbox lock) and a global limit
  on concurrent snapshots and restores (protects the host);
* a snapshot is ``ready`` only when its manifest exists; a failure leaves a
  ``failed`` record and no manifest;
* credentials never enter an archive: known secret values from the
  sandbox's environment are handed to the writer, which scrubs git
  credentials and refuses a snapshot in which a secret still appears;
* a restore that fails verification deletes the half-restored sandbox.

New snapshots use format v2 (deduplicated chunks, ``app.snapshots.chunked_writer``)
unless ``SANDBOX_SNAPSHOT_FORMAT=v1``; both formats restore. Repo images are
snapshots too, so they share chunks with the sessions snapshotted from them.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from app.errors import BadRequest, SandboxControlError, SandboxNotRunning, SnapshotCorrupt, SnapshotNotFound
from app.locks import KeyedLocks
from app.logging import get_logger
from app.providers.base import Provider
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.sandboxes import SandboxService, describe_error
from app.services.secret_values import sandbox_secret_values
from app.settings import Settings
from app.snapshots.chunk_store import ChunkStore
from app.snapshots.chunked_manifest import ChunkedManifest
from app.snapshots.chunked_writer import write_chunked_snapshot
from app.snapshots.manifest import validate_snapshot_id
from app.snapshots.reader import Manifest, delete_snapshot, load_manifest, restore_snapshot
from app.snapshots.writer import write_snapshot
from app.storage.blobs.base import BlobStore
from app.storage.state.chunks import ChunkIndex
from app.storage.state.sandboxes import SandboxRecord
from app.storage.state.snapshots import SnapshotRecord, SnapshotStore
from app.storage.state.times import utcnow
from sandbox_runtime.contract import BOOT_MODE, RESTORED_FROM_SNAPSHOT, BootMode

log = get_logger("snapshots")

#: Written by the service when a restore is complete; the gated entry command waits for it.
RESTORE_GATE = "/tmp/.sandbox-control-restored"
_GATE_SCRIPT = 'i=0; while [ ! -e "$0" ]; do i=$((i+1)); [ "$i" -gt 36000 ] && exit 75; sleep 0.05; done; exec "$@"'


def new_snapshot_id() -> str:
    return "snap_" + secrets.token_hex(8)


def gated_command(command: list[str], marker: str = RESTORE_GATE) -> list[str]:
    """Wrap an entry command so it starts only once ``marker`` exists (files restored first)."""
    return ["/bin/sh", "-c", _GATE_SCRIPT, marker, *command]


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def ready_fields(manifest: Manifest) -> dict[str, Any]:
    """What a ``ready`` record says about its manifest (either format)."""
    return {
        "paths": list(manifest.paths),
        "size_bytes": manifest.compressed_size,
        "raw_size": manifest.raw_size,
        "file_count": manifest.file_count,
        "sha256": manifest.sha256,
        "git_head": manifest.git_head,
        "format_version": manifest.format_version,
        # v1: the whole blob was new; v2: only the chunks not stored before.
        "stored_bytes": manifest.stored_bytes if isinstance(manifest, ChunkedManifest) else manifest.compressed_size,
    }


class SnapshotService:
    """Take, list, delete and restore snapshots."""

    def __init__(
        self,
        settings: Settings,
        records: SnapshotStore,
        blobs: BlobStore,
        provider: Provider,
        sandboxes: SandboxService,
        chunk_index: ChunkIndex,
        *,
        replica_id: str = "",
    ) -> None:
        self.settings = settings
        self.replica_id = replica_id
        self.records = records
        self.blobs = blobs
        self.chunk_index = chunk_index
        self.chunks = ChunkStore(blobs, chunk_index)
        self.provider = provider
        self.sandboxes = sandboxes
        self._locks: KeyedLocks[str] = KeyedLocks()
        self._writing: set[str] = set()
        self._slots = asyncio.Semaphore(settings.snapshot_concurrency)

    # -- taking ------------------------------------------------------------

    async def snapshot(
        self,
        sandbox_any_id: str,
        *,
        reason: str = "manual",
        session_id: str | None = None,
        snapshot_id: str | None = None,
        resume: bool = False,
    ) -> SnapshotRecord:
        """Snapshot a running sandbox; returns the ready record or raises (leaving a failed one).

        ``snapshot_id`` fixes the new snapshot's id (an idempotent request's); with
        ``resume`` an existing snapshot of that id (made before a crash) is returned instead.
        """
        if resume and snapshot_id is not None:
            existing = await self.records.get(snapshot_id)
            if existing is not None:
                return existing
        sandbox = await self.sandboxes.get(sandbox_any_id)
        if sandbox.status != "running" or sandbox.provider_object_id is None:
            raise SandboxNotRunning(f"sandbox {sandbox.id!r} is not running ({sandbox.status})", sandbox_id=sandbox.id)
        ref = sandbox.provider_object_id
        now = utcnow()
        record = SnapshotRecord(
            id=snapshot_id or new_snapshot_id(),
            sandbox_id=sandbox.id,
            provider=sandbox.provider,
            status="creating",
            created_at=now,
            updated_at=now,
            session_id=session_id or sandbox.session_id,
            reason=reason,
            repo_owner=sandbox.repo_owner,
            repo_name=sandbox.repo_name,
            owner=self.replica_id or None,
        )
        async with self._locks.hold(sandbox.id), self._slots:
            await self.records.insert(record)
            # Until the record says ready: crash recovery must not take it for a dead writer's.
            self._writing.add(record.id)
            try:
                try:
                    manifest = await self._write(record, ref, sandbox)
                except BaseException as exc:
                    await asyncio.shield(self.records.update(record.id, status="failed", error=describe_error(exc)))
                    log.warning(
                        "snapshot.failed", snapshot_id=record.id, sandbox_id=sandbox.id, error=describe_error(exc)
                    )
                    raise
                updated = await self.records.update(record.id, status="ready", **ready_fields(manifest))
            finally:
                self._writing.discard(record.id)
        await self.sandboxes.record_event(
            sandbox.id, "snapshotted", snapshot_id=record.id, size=manifest.compressed_size
        )
        assert updated is not None
        log.info(
            "snapshot.ready",
            snapshot_id=record.id,
            sandbox_id=sandbox.id,
            bytes=manifest.compressed_size,
            stored_bytes=updated.stored_bytes,
        )
        return updated

    def is_writing(self, snapshot_id: str) -> bool:
        """True while this process writes that snapshot (crash recovery leaves it alone)."""
        return snapshot_id in self._writing

    async def _write(self, record: SnapshotRecord, ref: str, sandbox: SandboxRecord) -> Manifest:
        paths = await self._existing_paths(ref)
        if not paths:
            raise BadRequest(f"none of {self.settings.snapshot_paths} exists in the sandbox")
        repo = f"{sandbox.repo_owner}/{sandbox.repo_name}" if sandbox.repo_owner and sandbox.repo_name else None
        common: dict[str, Any] = dict(
            snapshot_id=record.id,
            sandbox_id=sandbox.id,
            provider=sandbox.provider,
            paths=paths,
            export=lambda path: self.provider.export_tar(ref, path),
            session_id=record.session_id,
            repo=repo,
            git_head=await self._git_head(ref, sandbox),
            reason=record.reason or "manual",
            secret_values=await sandbox_secret_values(self.provider.exec, ref),
            allow_external_symlinks=self.settings.snapshot_keep_external_symlinks,
        )
        if self.settings.snapshot_format == "v1":
            return await write_snapshot(self.blobs, **common)
        return await write_chunked_snapshot(
            self.chunks,
            mark_all=self.chunk_index.mark_all,
            concurrency=self.settings.snapshot_chunk_concurrency,
            **common,
        )

    async def _existing_paths(self, ref: str) -> list[str]:
        wanted = self.settings.snapshot_paths
        result = await self.provider.exec(
            ref, ["sh", "-c", 'for p; do [ -d "$p" ] && echo "$p"; done; true', "sh", *wanted], timeout=30
        )
        present = set(result.stdout.decode(errors="replace").splitlines())
        return [p for p in wanted if p in present]

    async def _git_head(self, ref: str, sandbox: SandboxRecord) -> str | None:
        repo_dir = f"/workspace/{sandbox.repo_name}" if sandbox.repo_name else None
        script = (
            'if [ -n "$0" ]; then git -C "$0" rev-parse HEAD; exit; fi; '
            'for d in /workspace/*/.git; do [ -e "$d" ] && git -C "${d%/.git}" rev-parse HEAD && exit; done; true'
        )
        try:
            result = await self.provider.exec(ref, ["sh", "-c", script, repo_dir or ""], timeout=30)
        except SandboxControlError:
            return None
        head = result.stdout.decode(errors="replace").strip().splitlines()
        return head[0] if result.exit_code == 0 and head and re.fullmatch(r"[0-9a-f]{40,64}", head[0]) else None

    # -- reading -----------------------------------------------------------

    async def get(self, snapshot_id: str) -> SnapshotRecord:
        """A snapshot by id; one this service never recorded is adopted from its manifest.

        Snapshots outlive any one service instance: another replica, a rebuilt
        state store or another machine sharing the bucket can restore them.
        """
        try:
            validate_snapshot_id(snapshot_id)
        except ValueError as exc:
            raise BadRequest(str(exc), field="snapshot_id") from None
        record = await self.records.get(snapshot_id)
        if record is None:
            record = await self._adopt(snapshot_id)
        if record.status == "deleted":
            raise SnapshotNotFound(f"snapshot {snapshot_id!r} not found", snapshot_id=snapshot_id)
        return record

    async def _adopt(self, snapshot_id: str) -> SnapshotRecord:
        manifest = await load_manifest(self.blobs, snapshot_id)  # SnapshotNotFound without a manifest
        owner, _, name = (manifest.repo or "").partition("/")
        record = SnapshotRecord(
            id=manifest.snapshot_id,
            sandbox_id=manifest.sandbox_id,
            provider=manifest.provider,
            status="ready",
            created_at=manifest.created_at,
            updated_at=utcnow(),
            session_id=manifest.session_id,
            reason=manifest.reason,
            repo_owner=owner or None,
            repo_name=name or None,
            **ready_fields(manifest),
        )
        existing = await self.records.get(snapshot_id)
        if existing is not None:  # adopted concurrently
            return existing
        await self.records.insert(record)
        log.info("snapshot.adopted", snapshot_id=snapshot_id, sandbox_id=manifest.sandbox_id)
        return record

    async def list(self, *, sandbox_id: str | None = None, session_id: str | None = None) -> list[SnapshotRecord]:
        if sandbox_id is not None:  # accept the provider object id too
            known = await self.sandboxes.find(sandbox_id, include_deleted=True)
            sandbox_id = known.id if known is not None else sandbox_id
        records = await self.records.list(sandbox_id=sandbox_id, session_id=session_id)
        return [r for r in records if r.status != "deleted"]

    async def delete(self, snapshot_id: str) -> SnapshotRecord:
        record = await self.get(snapshot_id)
        await delete_snapshot(self.blobs, record.id)
        updated = await self.records.update(record.id, status="deleted")
        return updated or record

    # -- restoring ---------------------------------------------------------

    async def restore(
        self,
        snapshot_id: str,
        request: CreateSandboxRequest,
        *,
        extra_env: dict[str, str] | None = None,
        boot_mode: BootMode = BootMode.SNAPSHOT_RESTORE,
        resume: bool = False,
        **fields: Any,
    ) -> SandboxRecord:
        """A new sandbox holding the snapshot's files; its entry command starts after the files are in.

        With ``resume`` (an idempotent request taken over after a crash) a sandbox of
        ``request.sandbox_id`` that exists already is returned instead.

        ``boot_mode`` is ``repo_image`` when the snapshot is a repo image's blob:
        the runtime then resets the checkout to the branch head.
        """
        if resume and request.sandbox_id is not None:
            existing = await self.sandboxes.find(request.sandbox_id, include_deleted=True)
            if existing is not None:
                return existing
        record = await self.get(snapshot_id)
        if record.status != "ready":
            raise SnapshotNotFound(f"snapshot {snapshot_id!r} is {record.status}, not ready", snapshot_id=snapshot_id)
        manifest = await load_manifest(self.blobs, record.id)
        if manifest.sha256 != record.sha256 or manifest.compressed_size != record.size_bytes:
            raise SnapshotCorrupt(f"snapshot {record.id}: manifest does not match the recorded snapshot")
        gated = gated_command(list(request.command)) if request.command else None
        env = {BOOT_MODE: boot_mode.value, **(extra_env or {})}
        if boot_mode is BootMode.SNAPSHOT_RESTORE:
            env[RESTORED_FROM_SNAPSHOT] = "true"
        fields.setdefault("session_id", record.session_id)
        fields.setdefault("repo_owner", record.repo_owner)
        fields.setdefault("repo_name", record.repo_name)
        async with self._slots:
            gated_request = request.model_copy(update={"command": gated, "from_snapshot": None})
            sandbox = await self.sandboxes.create(gated_request, extra_env=env, **fields)
            ref = sandbox.provider_object_id
            assert ref is not None
            try:
                await restore_snapshot(
                    self.blobs,
                    manifest,
                    lambda path, stream: self.provider.import_tar(ref, path, stream),
                    allow_external_symlinks=self.settings.snapshot_keep_external_symlinks,
                    chunks_ahead=self.settings.snapshot_chunk_concurrency,
                )
                if gated:
                    await self.provider.write_file(ref, RESTORE_GATE, _one_chunk(b""))
            except BaseException as exc:
                log.warning("snapshot.restore_failed", snapshot_id=record.id, error=describe_error(exc))
                await asyncio.shield(self._discard(sandbox.id))
                raise
        await self.sandboxes.record_event(sandbox.id, "restored", snapshot_id=record.id)
        return await self.sandboxes.get(sandbox.id)

    async def _discard(self, sandbox_id: str) -> None:
        try:
            await self.sandboxes.delete(sandbox_id)
        except SandboxControlError as exc:  # the reconciler finishes it
            log.warning("snapshot.discard_failed", sandbox_id=sandbox_id, error=str(exc))
