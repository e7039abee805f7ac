"""The ``local`` provider: each sandbox is a bubblewrap namespace jail on this host.

A sandbox is a directory (``store``) plus, while running, one detached
*init*: a keeper shell that is nobody's child (so it survives a service
restart) running bwrap with the entry command, or ``sleep infinity``.

Every exec, file transfer and tar runs as a fresh bwrap with the same
namespaces and binds (``bwrap``), as the sandbox user, so a symlink in
the workspace can never turn a service-side write onto the host. Each exec
has its own pid namespace: joining the init's (``--pidns``) fails with EPERM
here, so background processes an exec starts end when that exec ends; only
the entry command runs for the sandbox's whole life.

When the service runs as root, each sandbox runs as its own unprivileged
host uid from ``[uid_base, uid_base + uid_count)`` (``LocalSettings``): host
root-owned files are then "nobody" inside, and ``stop`` can sweep every
process of the sandbox by uid. The data dir must be searchable (``o+x``) by
those uids; ``aopen`` checks it.

Limits: ``limits`` (cgroups when writable, else rlimits); ``disk_mb``
and ``gpu`` are refused, unknown images and networks too.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.errors import ProviderError, ProviderUnavailable, SandboxNotRunning
from app.locks import KeyedLocks
from app.provider_settings import LocalSettings
from app.providers.base import (
    Capabilities,
    ExecEvent,
    ExecResult,
    ExitEvent,
    Provider,
    ProviderContext,
    ProviderSandbox,
    ProviderStatus,
    SandboxSpec,
)
from app.providers.local.bwrap import (
    HOST_ENV,
    KEEPER_STATUS_FD,
    WORKSPACE,
    HostTools,
    bwrap_options,
    find_host_tools,
    host_argv,
    options_fd,
    sandbox_env,
    system_mounts,
)
from app.providers.local.exits import ExitWatch
from app.providers.local.files import IMPORT_LANES, FileOps, Spawn
from app.providers.local.init import InitSupervisor
from app.providers.local.io import run_process
from app.providers.local.limits import AppliedLimits, ResourceLimiter
from app.providers.local.ports import port_endpoint as local_port_endpoint
from app.providers.local.runtime import RuntimeBundle, runtime_bundle
from app.providers.local.smoke import smoke_test
from app.providers.local.spec import check_exec, check_spec
from app.providers.local.store import InitRecord, LocalStore, SandboxMeta, meta_of
from app.providers.local.stream import stream_process
from app.providers.ports import PortEndpoint
from app.providers.pty import HelperPtyMixin

log = logging.getLogger(__name__)


class LocalProvider(HelperPtyMixin, Provider):
    """Sandboxes as bubblewrap jails on this host (see the module docstring)."""

    name = "local"
    capabilities = Capabilities(
        gpu=False,
        stop_start=True,
        max_disk_mb=None,
        networks=frozenset({"host", "none"}),
        shared_loopback=True,
        import_lanes=IMPORT_LANES,
        exit_events=True,
    )

    def __init__(self, config: LocalSettings, context: ProviderContext) -> None:
        super().__init__(config, context)
        self._config = config
        self._store = LocalStore(Path(context.data_dir).absolute() / "local")
        self._privileged = os.geteuid() == 0
        self._limiter = ResourceLimiter(privileged=self._privileged)
        self._tools: HostTools | None = None
        self._system: list[str] = []
        self._runtime = RuntimeBundle()
        self._open_lock = asyncio.Lock()
        self._locks: KeyedLocks[str] = KeyedLocks()
        #: ref -> pids (= process groups) of execs in flight, killed by ``stop``.
        self._execs: dict[str, set[int]] = {}
        self._files = FileOps(self._spawn)
        self._init = InitSupervisor(self._store, self._limiter)

    def runtime_command(self) -> list[str]:
        """``python3 -m sandbox_runtime`` with the bound runtime on its import path only."""
        return self._runtime.command

    # -- lifecycle of the provider -------------------------------------------

    async def aopen(self) -> None:
        """Find bwrap and helpers, check the data dir and run a smoke-test sandbox."""
        async with self._open_lock:
            if self._tools is not None:
                return
            tools = await asyncio.to_thread(self._prepare)
            await smoke_test(tools, self._system, privileged=self._privileged)
            log.info("local provider ready: limits via %s", self._limiter.mechanism)
            self._tools = tools

    def _prepare(self) -> HostTools:
        tools = find_host_tools(self._config.bwrap, privileged=self._privileged)
        rootfs = self._config.rootfs
        if rootfs is not None and not rootfs.is_dir():
            raise ProviderUnavailable(f"local provider: SANDBOX_LOCAL_ROOTFS {str(rootfs)!r} is not a directory")
        self._system = system_mounts(rootfs.absolute() if rootfs is not None else None)
        if self._config.runtime:
            self._runtime = runtime_bundle(self._config.opencode_dir)
            self._system += self._runtime.mounts
        self._store.prepare()
        if self._privileged:
            self._store.check_searchable()
        self._limiter.prlimit_available = tools.prlimit is not None
        self._limiter.probe()
        return tools

    async def _opened(self) -> HostTools:
        if self._tools is None:
            await self.aopen()
        assert self._tools is not None
        return self._tools

    # -- sandbox lifecycle ---------------------------------------------------

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        """Lay out the sandbox, prove it can run a command, then start its init."""
        await self._opened()
        network = check_spec(spec, base_image=self.context.base_image)
        meta = meta_of(spec, network=network, effective=self._limiter.effective(spec.resources))
        config = self._config
        uid_range = range(config.uid_base, config.uid_base + config.uid_count)
        etc_dir = (config.rootfs.absolute() / "etc") if config.rootfs else Path("/etc")
        meta = await asyncio.to_thread(
            self._store.create, meta, uid_range=uid_range if self._privileged else None, etc_dir=etc_dir
        )
        try:
            async with self._locks.hold(meta.ref):
                await self._launch(meta)
        except BaseException:
            await asyncio.shield(self._discard(meta))
            raise
        record = await asyncio.to_thread(self._store.load_init, meta.ref)
        # "running", or already "failed"/"stopped" if the entry command ended at once.
        return self._describe(meta, self._init.status_of(meta, record))

    async def _launch(self, meta: SandboxMeta) -> None:
        limits = await asyncio.to_thread(self._limiter.apply, meta.ref, meta.resources)
        try:
            # No separate probe: bwrap reports its child's pid on the status fd
            # only once every bind and namespace is set up, which is the proof
            # the launch waits for.
            tools = await self._opened()
            with options_fd(self._options(meta, cwd=WORKSPACE, env=None, status_fd=KEEPER_STATUS_FD)) as fd:
                await self._init.launch(tools, meta, limits, fd)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._limiter.release, limits.cgroups))
            raise

    async def start(self, ref: str) -> None:
        """Relaunch the init with the same meta; a running sandbox is left alone."""
        await self._opened()
        async with self._locks.hold(ref):
            meta, record = await asyncio.to_thread(self._load, ref)
            if self._init.is_running(record):
                return
            await self._halt(meta)  # leftovers of an init that died on its own
            await self._launch(meta)

    async def stop(self, ref: str) -> None:
        """End every process of the sandbox; keep its files."""
        await self._opened()
        async with self._locks.hold(ref):
            meta, _ = await asyncio.to_thread(self._load, ref)
            await self._halt(meta)

    async def delete(self, ref: str) -> None:
        """Stop the sandbox and remove its directory."""
        await self._opened()
        async with self._locks.hold(ref):
            meta, _ = await asyncio.to_thread(self._load, ref)
            await self._discard(meta)

    async def _discard(self, meta: SandboxMeta) -> None:
        await self._halt(meta)
        await asyncio.to_thread(self._store.remove, meta.ref)
        self._execs.pop(meta.ref, None)

    async def _halt(self, meta: SandboxMeta) -> None:
        await self._init.halt(meta, list(self._execs.get(meta.ref, ())))

    # -- queries ----------------------------------------------------------------

    def _load(self, ref: str) -> tuple[SandboxMeta, InitRecord | None]:
        return self._store.load_meta(ref), self._store.load_init(ref)

    async def status(self, ref: str) -> ProviderStatus:
        """running while the init lives; failed if it ended badly on its own; else stopped."""

        def read() -> ProviderStatus:
            meta, record = self._load(ref)
            return self._init.status_of(meta, record)

        return await asyncio.to_thread(read)

    def watch_exits(self) -> AsyncIterator[ExitEvent]:
        """Entry commands that end on their own, from the keepers' records (polled)."""
        return ExitWatch(self._store).events()

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        """Sandboxes in this data dir whose labels include ``labels``."""
        wanted = dict(labels or {})

        def scan() -> list[ProviderSandbox]:
            self._store.sweep_half_created()
            return [
                self._describe(meta, self._init.status_of(meta, self._store.load_init(meta.ref)))
                for meta in self._store.all_metas()
                if wanted.items() <= meta.labels.items()
            ]

        return await asyncio.to_thread(scan)

    def _describe(self, meta: SandboxMeta, status: ProviderStatus) -> ProviderSandbox:
        return ProviderSandbox(
            provider_object_id=meta.ref,
            status=status,
            labels=dict(meta.labels),
            image=meta.image,
            created_at=meta.created_at,
            resources=meta.effective,
        )

    async def _running(self, ref: str) -> tuple[SandboxMeta, InitRecord]:
        """Meta and init record of a running sandbox, else NotFound / NotRunning."""
        await self._opened()
        meta, record = await asyncio.to_thread(self._load, ref)
        if record is None or not self._init.is_running(record):
            raise SandboxNotRunning(f"sandbox {ref} is not running", ref=ref)
        return meta, record

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """On the host's loopback, or (``network: "none"``) inside the sandbox's namespace (``ports``)."""
        meta, _ = await self._running(ref)
        return local_port_endpoint(meta.network, meta.uid, port)

    # -- commands and files -----------------------------------------------------

    def _options(
        self, meta: SandboxMeta, *, cwd: str, env: Mapping[str, str] | None, status_fd: int | None = None
    ) -> builtins.list[str]:
        return bwrap_options(
            system=self._system,
            paths=self._store.paths(meta.ref),
            hostname=meta.ref,
            isolate_network=meta.network == "none",
            env=sandbox_env(meta.env, env, meta.ref, self._runtime.path_prefix),
            cwd=cwd,
            host_root=self._config.rootfs is None,
            status_fd=status_fd,
        )

    def _spawn_argv(self, meta: SandboxMeta, limits: AppliedLimits, fd: int, argv: Sequence[str]) -> builtins.list[str]:
        """The host argv of a sandboxed command whose bwrap options are in ``fd``."""
        assert self._tools is not None
        return host_argv(
            self._tools,
            args_fd=fd,
            command=argv,
            uid=meta.uid,
            cgroup_procs=limits.procs_files,
            rlimit_options=limits.rlimit_options,
        )

    def _sandboxed(
        self, meta: SandboxMeta, *, cwd: str = WORKSPACE, env: Mapping[str, str] | None = None
    ) -> contextlib.AbstractContextManager[int]:
        """A memfd with the bwrap options of one command in ``meta``'s sandbox."""
        return options_fd(self._options(meta, cwd=cwd, env=env))

    @contextlib.contextmanager
    def _command(
        self, meta: SandboxMeta, limits: AppliedLimits, argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None
    ) -> Iterator[tuple[builtins.list[str], dict[str, Any]]]:
        """Host argv of one command in the sandbox and how to spawn it; a bwrap that cannot start is a ProviderError."""
        with self._sandboxed(meta, cwd=cwd, env=env) as fd:
            spawn = {"env": HOST_ENV, "pass_fds": (fd,), "track": self._exec_registry(meta.ref)}
            try:
                yield self._spawn_argv(meta, limits, fd, argv), spawn
            except OSError as exc:
                raise ProviderError(f"sandbox {meta.ref}: cannot start bwrap: {exc}") from exc

    def _exec_registry(self, ref: str) -> set[int]:
        """The set of in-flight exec pids of ``ref`` (killed by ``stop``)."""
        return self._execs.setdefault(ref, set())

    @contextlib.asynccontextmanager
    async def _spawn(self, ref: str, argv: Sequence[str], *, env: Mapping[str, str]) -> AsyncIterator[Spawn]:
        """``FileOps``'s ``Spawner``: a helper command in running sandbox ``ref``."""
        meta, record = await self._running(ref)
        with self._sandboxed(meta, env=env) as fd:
            yield Spawn(self._spawn_argv(meta, record.limits, fd, argv), (fd,), self._exec_registry(ref))

    async def _run(
        self,
        meta: SandboxMeta,
        limits: AppliedLimits,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str = WORKSPACE,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> ExecResult:
        with self._command(meta, limits, argv, cwd=cwd, env=env) as (host, spawn):
            return await run_process(host, timeout=timeout, stdin=stdin, max_output_bytes=max_output_bytes, **spawn)

    async def exec(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> ExecResult:
        """Run ``argv`` in a fresh bwrap of the sandbox; see ``Provider.exec``."""
        cwd = check_exec(argv, cwd=cwd, env=env, timeout=timeout)
        meta, record = await self._running(ref)
        return await self._run(
            meta, record.limits, argv, timeout=timeout, cwd=cwd, env=env, stdin=stdin, max_output_bytes=max_output_bytes
        )

    async def exec_stream(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: AsyncIterator[bytes] | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> AsyncGenerator[ExecEvent, None]:
        """``exec`` with its output read from bwrap's pipes as it comes; see ``Provider.exec_stream``."""
        cwd = check_exec(argv, cwd=cwd, env=env, timeout=timeout)
        meta, record = await self._running(ref)
        with self._command(meta, record.limits, argv, cwd=cwd, env=env) as (host, spawn):
            events = stream_process(host, timeout=timeout, stdin=stdin, max_output_bytes=max_output_bytes, **spawn)
            async for event in events:
                yield event

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Stream a file with ``cat`` inside the sandbox. Errors raise on first iteration."""
        return self._files.read(ref, path)

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Stream ``data`` into ``path`` (parents created) with ``cat`` inside the sandbox."""
        await self._files.write(ref, path, data)

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Stream ``tar -c`` of directory ``path`` run inside the sandbox."""
        return self._files.export_tar(ref, path)

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Feed ``data`` to ``tar -x`` into ``path`` (created) inside the sandbox."""
        await self._files.import_tar(ref, path, data, lanes=self.capabilities.import_lanes)
