"""Sandbox lifecycle on top of the provider contract and the state store.

The state store is the service's memory; the provider is the truth about
what runs. Every change goes store-first ("creating", "deleting") so that a
crash mid-operation leaves a record the reconciler can finish: adopt the
sandbox, delete it, or mark it failed. Nothing is left running unrecorded.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from app.errors import (
    BadRequest,
    Conflict,
    SandboxControlError,
    SandboxNotFound,
    SandboxNotRunning,
    UnsupportedSpec,
)
from app.locks import KeyedLocks
from app.logging import get_logger
from app.providers.base import ExecEvent, ExecResult, Provider, Resources, SandboxSpec
from app.providers.streaming import once
from app.schemas.common import RESERVED_LABEL_PREFIX
from app.schemas.sandboxes import CreateSandboxRequest, ExecRequest
from app.settings import Settings
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.times import utcnow

ID_LABEL = RESERVED_LABEL_PREFIX + "id"
MANAGED_LABEL = RESERVED_LABEL_PREFIX + "managed"
DEFAULT_CWD = "/workspace"
#: Where a plain pool claim puts its env in the sandbox (mode 0600, outside the snapshot paths).
CLAIM_ENV_FILE = "/tmp/.sandbox-control/claim.env"
#: Runs ``"$@"`` with the claim's env loaded first, then the command's own env on top: that
#: travels as ``_SC_EXEC_<name>`` (the names, validated env names, in ``$1``), so sourcing the
#: file cannot override it; values are only ever expanded, never evaluated.
_WITH_CLAIM_ENV = (
    '[ -r "$0" ] && . "$0"; '
    r'for n in $1; do eval "export $n=\"\$_SC_EXEC_$n\"; unset _SC_EXEC_$n"; done; '
    'shift; exec "$@"'
)
_EXEC_ENV_PREFIX = "_SC_EXEC_"
_FILE_PATH_MAX = 4096

log = get_logger("sandboxes")


def new_sandbox_id() -> str:
    return "sbx_" + secrets.token_hex(8)


def resolve_sandbox_path(path: str) -> str:
    """Normalise a file API path: relative to /workspace, no ``..``, no NUL.

    File operations run inside the sandbox as its own user, so an absolute
    path names the sandbox's own filesystem, never the host's; ``..`` is still
    refused so a path means what it says.
    """
    if not path or len(path) > _FILE_PATH_MAX or "\x00" in path:
        raise BadRequest("path must be 1-4096 characters without NUL bytes", field="path")
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise BadRequest("path must not contain '..'", field="path")
    full = PurePosixPath(path) if path.startswith("/") else PurePosixPath(DEFAULT_CWD) / path
    if str(full) == "/":
        raise BadRequest("path must name a file", field="path")
    return str(full)


class SandboxService:
    """Create, find, run commands in, stop, start and delete sandboxes."""

    def __init__(self, settings: Settings, records: SandboxStore, provider: Provider, *, replica_id: str = "") -> None:
        self.settings = settings
        self.records = records
        self.provider = provider
        #: Recorded as the owner of the sandboxes this replica creates.
        self.replica_id = replica_id
        self._locks: KeyedLocks[str] = KeyedLocks()
        #: Called with the sandbox id once it stopped or was deleted (its previews die with it).
        self.halt_listeners: builtins.list[Callable[[str], Awaitable[None]]] = []

    # -- create ------------------------------------------------------------

    def check_spec(self, resources: Resources, network: str | None) -> None:
        """Refuse resources or a network the provider cannot honour (422 naming the field)."""
        caps = self.provider.capabilities
        name = self.provider.name
        if resources.gpu and not caps.gpu:
            raise UnsupportedSpec("resources.gpu", name, "no GPU is available")
        if resources.disk_mb and caps.max_disk_mb is not None and resources.disk_mb > caps.max_disk_mb:
            raise UnsupportedSpec("resources.disk_mb", name, f"at most {caps.max_disk_mb} MB")
        if network and caps.networks is not None and network not in caps.networks:
            raise UnsupportedSpec("network", name, f"choose one of {sorted(caps.networks)}")

    def _check_spec(self, request: CreateSandboxRequest) -> None:
        self.check_spec(request.resources, request.network)
        if request.ttl_seconds and request.ttl_seconds > self.settings.max_ttl_seconds:
            raise BadRequest(f"ttl_seconds exceeds the maximum of {self.settings.max_ttl_seconds}", field="ttl_seconds")

    async def create(
        self,
        request: CreateSandboxRequest,
        *,
        extra_env: Mapping[str, str] | None = None,
        service_labels: Mapping[str, str] | None = None,
        **record_fields: Any,
    ) -> SandboxRecord:
        """Create a sandbox and return once it runs; a failure leaves no sandbox behind.

        ``service_labels`` may use the reserved prefix (the service's own labels,
        e.g. a warm pool's); callers' labels in ``request`` may not.
        """
        self._check_spec(request)
        labels = {**request.labels, **(service_labels or {})}
        sandbox_id = request.sandbox_id or new_sandbox_id()
        await self.check_id_free(sandbox_id)
        now = utcnow()
        ttl = request.ttl_seconds or self.settings.default_ttl_seconds
        record = SandboxRecord(
            id=sandbox_id,
            provider=self.provider.name,
            status="creating",
            created_at=now,
            updated_at=now,
            image=request.image or self.settings.base_image,
            labels=labels,
            resources=request.resources.model_dump(exclude_none=True),
            network=request.network,
            command=list(request.command) if request.command else None,
            env_names=sorted({*request.env, *(extra_env or {})}),
            ttl_seconds=ttl,
            expires_at=now + timedelta(seconds=ttl) if ttl else None,
            owner=self.replica_id or None,
            **record_fields,
        )
        try:
            await self.records.insert(record)
        except Exception:  # a concurrent create with the same id wins the primary key
            await self.check_id_free(sandbox_id)
            raise
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            image=record.image,
            env={**request.env, **(extra_env or {})},
            labels={**labels, ID_LABEL: sandbox_id, MANAGED_LABEL: "true"},
            resources=request.resources,
            network=request.network,
            command=request.command,
            ttl_seconds=ttl,
        )
        async with self._locks.hold(sandbox_id):
            try:
                created = await self.provider.create(spec)
            except BaseException as exc:
                await asyncio.shield(self._abandon_create(sandbox_id, exc))
                raise
            updated = await self.records.update(
                sandbox_id,
                provider_object_id=created.provider_object_id,
                status=created.status,
                resources=created.resources.model_dump(exclude_none=True) or record.resources,
            )
        await self.records.add_event(sandbox_id, "created", provider_object_id=created.provider_object_id)
        log.info("sandbox.created", sandbox_id=sandbox_id, provider_object_id=created.provider_object_id)
        return updated or record

    async def _abandon_create(self, sandbox_id: str, exc: BaseException) -> None:
        """Remove whatever the provider made for a failed create and record why."""
        try:
            for leftover in await self.provider.list({ID_LABEL: sandbox_id}):
                await self.provider.delete(leftover.provider_object_id)
        except Exception as cleanup_exc:  # the reconciler retries later
            log.warning("sandbox.create_cleanup_failed", sandbox_id=sandbox_id, error=str(cleanup_exc))
            await self.records.update(sandbox_id, status="failed", error=describe_error(exc))
            return
        await self.records.update(sandbox_id, status="deleted", deleted_at=utcnow(), error=describe_error(exc))
        await self.records.add_event(sandbox_id, "create_failed", error=describe_error(exc))

    # -- lookup ------------------------------------------------------------

    async def get(self, any_id: str) -> SandboxRecord:
        record = await self.records.get(any_id)
        if record is None:
            raise SandboxNotFound(f"sandbox {any_id!r} not found", sandbox_id=any_id)
        return record

    async def check_id_free(self, sandbox_id: str) -> None:
        """Raise ``Conflict`` when ``sandbox_id`` names a sandbox, live or deleted.

        Ids are never reused: snapshots, events and a control plane's records
        keep naming the sandbox that had the id, so a second one would be
        ambiguous. A claimed pool member's former id counts as taken too.
        """
        existing = await self.records.get(sandbox_id, include_deleted=True)
        if existing is None:
            return
        if existing.status == "deleted":
            raise Conflict(
                f"sandbox id {sandbox_id!r} belonged to a sandbox that was deleted; ids are not reused",
                sandbox_id=sandbox_id,
            )
        raise Conflict(f"sandbox {sandbox_id!r} already exists", sandbox_id=sandbox_id)

    def is_creating(self, sandbox_id: str) -> bool:
        """True while this process creates (or deletes, starts, stops) ``sandbox_id``."""
        return self._locks.busy(sandbox_id)

    async def fresh(self, any_id: str) -> SandboxRecord:
        """A sandbox as it is now: for a provider that reports no exits, its status is read first.

        (Providers with ``exit_events`` keep records current by themselves.)
        """
        record = await self.get(any_id)
        ref = record.provider_object_id
        if self.provider.capabilities.exit_events or record.status != "running" or ref is None:
            return record
        try:
            status = await self.provider.status(ref)
        except SandboxControlError:
            return record  # the reconciler deals with sandboxes that vanished or cannot be read
        if status != "running" and await self.records.change_status(record.id, ("running",), status):
            await self.records.add_event(record.id, "status_changed", old="running", new=status)
            return await self.get(record.id)
        return record

    async def find(self, any_id: str, *, include_deleted: bool = False) -> SandboxRecord | None:
        """A sandbox by either id, or None; ``include_deleted`` also finds deleted ones."""
        return await self.records.get(any_id, include_deleted=include_deleted)

    async def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxRecord]:
        return await self.records.list(labels)

    async def events(self, any_id: str) -> builtins.list[dict[str, Any]]:
        """What happened to a sandbox, oldest first."""
        record = await self.get(any_id)
        return await self.records.list_events(record.id)

    async def record_event(self, sandbox_id: str, kind: str, **detail: Any) -> None:
        """Add ``kind`` to a sandbox's event trail."""
        await self.records.add_event(sandbox_id, kind, **detail)

    async def running_ref(self, any_id: str) -> str:
        """The provider object id of a running sandbox (``SandboxNotRunning`` otherwise)."""
        record = await self._running(any_id)
        assert record.provider_object_id is not None  # _running checked it
        return record.provider_object_id

    async def running(self, any_id: str) -> SandboxRecord:
        """The record of a running sandbox; ``SandboxNotFound`` / ``SandboxNotRunning`` otherwise."""
        return await self._running(any_id)

    async def _running(self, any_id: str) -> SandboxRecord:
        record = await self.get(any_id)
        if record.status != "running" or record.provider_object_id is None:
            raise SandboxNotRunning(f"sandbox {record.id!r} is not running ({record.status})", sandbox_id=record.id)
        return record

    # -- lifecycle ---------------------------------------------------------

    async def delete(self, any_id: str) -> SandboxRecord:
        record = await self.get(any_id)
        async with self._locks.hold(record.id):
            if record.provider_object_id:
                # Already gone is fine: deleting is idempotent on the provider side.
                with contextlib.suppress(SandboxNotFound):
                    await self.provider.delete(record.provider_object_id)
            updated = await self.records.update(record.id, status="deleted", deleted_at=utcnow())
            await self.records.add_event(record.id, "deleted")
            await self._halted(record.id)
        log.info("sandbox.deleted", sandbox_id=record.id)
        return updated or record

    async def stop(self, any_id: str) -> SandboxRecord:
        record = await self.get(any_id)
        if not self.provider.capabilities.stop_start:
            raise UnsupportedSpec("stop", self.provider.name, "sandboxes cannot be stopped and resumed")
        async with self._locks.hold(record.id):
            if record.provider_object_id is None or record.status not in ("running", "stopped"):
                raise Conflict(f"sandbox {record.id!r} is {record.status}", sandbox_id=record.id)
            await self.provider.stop(record.provider_object_id)
            updated = await self.records.update(record.id, status="stopped")
            await self.records.add_event(record.id, "stopped")
            await self._halted(record.id)
        return updated or record

    async def _halted(self, sandbox_id: str) -> None:
        for listener in self.halt_listeners:
            await listener(sandbox_id)

    async def start(self, any_id: str) -> SandboxRecord:
        record = await self.get(any_id)
        if not self.provider.capabilities.stop_start:
            raise UnsupportedSpec("start", self.provider.name, "sandboxes cannot be stopped and resumed")
        async with self._locks.hold(record.id):
            if record.provider_object_id is None or record.status not in ("running", "stopped"):
                raise Conflict(f"sandbox {record.id!r} is {record.status}", sandbox_id=record.id)
            await self.provider.start(record.provider_object_id)
            updated = await self.records.update(record.id, status="running")
            await self.records.add_event(record.id, "started")
        return updated or record

    # -- commands and files ------------------------------------------------

    async def _exec_call(self, any_id: str, request: ExecRequest) -> ExecCall:
        """Where and how ``request`` runs: checked before anything starts."""
        record = await self._running(any_id)
        timeout = request.timeout_seconds or self.settings.exec_default_timeout
        if timeout > self.settings.exec_max_timeout:
            raise BadRequest(f"timeout_seconds exceeds the maximum of {self.settings.exec_max_timeout}")
        argv, env = command_line(record, request.command, request.env)
        assert record.provider_object_id is not None
        return ExecCall(
            sandbox_id=record.id,
            ref=record.provider_object_id,
            argv=argv,
            env=env,
            cwd=resolve_sandbox_path(request.cwd) if request.cwd else DEFAULT_CWD,
            timeout=timeout,
            stdin=request.stdin.encode() if request.stdin is not None else None,
        )

    async def exec(self, any_id: str, request: ExecRequest) -> ExecResult:
        call = await self._exec_call(any_id, request)
        result = await self.provider.exec(
            call.ref,
            call.argv,
            timeout=call.timeout,
            cwd=call.cwd,
            env=call.env,
            stdin=call.stdin,
            max_output_bytes=self.settings.exec_max_output_bytes,
        )
        if result.timed_out:
            log.info("sandbox.exec_timeout", sandbox_id=call.sandbox_id, argv0=call.argv[0], timeout=call.timeout)
        return result

    async def exec_stream(self, any_id: str, request: ExecRequest) -> AsyncGenerator[ExecEvent, None]:
        """``exec`` with its output as it comes; checks run (and raise) before this returns.

        Closing the returned stream, or cancelling its consumer, kills the command.
        """
        call = await self._exec_call(any_id, request)
        return self.provider.exec_stream(
            call.ref,
            call.argv,
            timeout=call.timeout,
            cwd=call.cwd,
            env=call.env,
            stdin=once(call.stdin) if call.stdin is not None else None,
            max_output_bytes=self.settings.exec_max_output_bytes,
        )


@dataclass(frozen=True)
class ExecCall:
    """One checked command: the sandbox's provider ref and what to run there."""

    sandbox_id: str
    ref: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout: float
    stdin: bytes | None


def command_line(
    record: SandboxRecord, command: Sequence[str] | str, env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and env to run ``command`` (argv, or a shell string) with in the sandbox.

    A plain pool claim's env is loaded from its file first (every command sees it, as
    a created sandbox's env), and the command's own ``env`` still wins over it.
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    if not record.claim_env:
        return argv, dict(env)
    names = " ".join(sorted(env))
    wrapped = ["/bin/sh", "-c", _WITH_CLAIM_ENV, CLAIM_ENV_FILE, names, *argv]
    return wrapped, {_EXEC_ENV_PREFIX + name: value for name, value in env.items()}


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of why an operation failed, for records and logs."""
    if isinstance(exc, SandboxControlError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}"
