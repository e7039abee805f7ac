"""``FakeProvider``: the provider contract on plain host processes, for fast tests.

A sandbox is a directory with three roots, mapped to the sandbox paths every
real provider offers:

    /workspace     -> <box>/workspace
    /home/sandbox  -> <box>/home
    /tmp           -> <box>/tmp

Commands run as host subprocesses (own session, cwd mapped). Arguments that
name those roots are rewritten to the host directories and the host
directories are mapped back in the output, so ``mv /workspace/a /workspace/b``
or ``pwd`` behave as in a sandbox. File and tar operations only accept paths
under the three roots (``PermissionError`` otherwise).

It honours the whole contract (statuses, errors, timeouts with group kill,
output caps, streaming) and passes the conformance suite, with the known
differences declared there: it is **not** an isolation boundary (network
mode ``none`` is recorded, not enforced; commands run as the test's user),
and its sandboxes end with the provider object (``aclose`` kills them) so a
test never leaks host processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from app.errors import BadRequest, SandboxNotFound, SandboxNotRunning, UnsupportedSpec
from app.providers.base import (
    Capabilities,
    ExecEvent,
    ExecResult,
    OutputChunk,
    Provider,
    ProviderContext,
    ProviderSandbox,
    ProviderStatus,
    Resources,
    SandboxSpec,
    check_argv,
)
from app.providers.local.io import close_transport, feed_input, os_error, run_process, stream_output
from app.providers.local.stream import stream_process
from app.providers.ports import PortEndpoint, loopback_endpoint
from app.providers.pty import HelperPtyMixin

#: sandbox root -> directory name inside the box
ROOTS = {"/workspace": "workspace", "/home/sandbox": "home", "/tmp": "tmp"}
_ROOT_PATTERN = re.compile(r"(?<![\w./-])(/workspace|/home/sandbox|/tmp)(?=/|$|[^\w.-])")
STOP_GRACE_SECONDS = 5.0
_CHUNK = 64 * 1024


@dataclass
class _Box:
    ref: str
    spec: SandboxSpec
    directory: Path
    created_at: datetime
    running: bool = False
    entry: asyncio.subprocess.Process | None = None
    execs: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def host_path(self, path: str) -> Path:
        """The host path of sandbox ``path``; outside the three roots is refused."""
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise BadRequest(f"path must be an absolute path: {path!r}")
        norm = os.path.normpath(path)
        for root, name in ROOTS.items():
            if norm == root or norm.startswith(root + "/"):
                host = self.directory / name / norm[len(root) :].lstrip("/")
                resolved = os.path.realpath(host)
                if resolved != str(self.directory) and not resolved.startswith(str(self.directory) + os.sep):
                    raise PermissionError(13, "path escapes the fake sandbox", path)
                return host
        raise PermissionError(13, "the fake sandbox only has /workspace, /home/sandbox and /tmp", path)

    def to_host(self, text: str) -> str:
        return _ROOT_PATTERN.sub(lambda m: str(self.directory / ROOTS[m.group(1)]), text)

    def from_host(self, data: bytes) -> bytes:
        for root, name in ROOTS.items():
            data = data.replace(str(self.directory / name).encode(), root.encode())
        return data


class FakeProvider(HelperPtyMixin, Provider):
    """In-process provider over host subprocesses; see the module docstring."""

    name = "fake"
    capabilities = Capabilities(gpu=False, stop_start=True, networks=frozenset({"host", "none"}))

    def __init__(
        self, config: object = None, context: ProviderContext | None = None, *, root: Path | None = None
    ) -> None:
        """As the registry builds it (no settings of its own: ``config`` is ``None``), or on ``root``."""
        if root is None:
            if context is None:
                raise ValueError("FakeProvider needs a context or root")
            root = Path(context.data_dir) / "fake"
        self._root = root.absolute()
        self._boxes: dict[str, _Box] = {}

    async def aclose(self) -> None:
        """End every process this fake started (its sandboxes do not outlive it)."""
        for box in list(self._boxes.values()):
            await self._halt(box)

    def _box(self, ref: str) -> _Box:
        try:
            return self._boxes[ref]
        except KeyError:
            raise SandboxNotFound(f"no fake sandbox {ref!r}", ref=ref) from None

    def _running_box(self, ref: str) -> _Box:
        box = self._box(ref)
        if self._status(box) != "running":
            raise SandboxNotRunning(f"sandbox {ref} is not running", ref=ref)
        return box

    def _env(self, box: _Box, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(box.directory / "home"),
            "TMPDIR": str(box.directory / "tmp"),
            "LANG": "C.UTF-8",
            "USER": "sandbox",
        }
        env.update(box.spec.env)
        env.update(extra or {})
        return env

    # -- lifecycle --------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        """Make the box's directories and start its entry command, if any."""
        if spec.resources.gpu is not None:
            raise UnsupportedSpec("resources.gpu", self.name, "no GPU")
        if spec.resources.disk_mb is not None:
            raise UnsupportedSpec("resources.disk_mb", self.name, "no disk quota")
        if spec.network is not None and spec.network not in (self.capabilities.networks or ()):
            raise UnsupportedSpec("network", self.name, "only 'host' and 'none'")
        if spec.command is not None:
            check_argv(spec.command)
        ref = "fk-" + secrets.token_hex(6)
        box = _Box(ref=ref, spec=spec, directory=self._root / "sandboxes" / ref, created_at=datetime.now(UTC))
        await asyncio.to_thread(self._layout, box.directory)
        self._boxes[ref] = box
        await self._launch(box)
        return self._describe(box)

    @staticmethod
    def _layout(directory: Path) -> None:
        for name in ROOTS.values():
            (directory / name).mkdir(parents=True, exist_ok=True)

    async def _launch(self, box: _Box) -> None:
        box.running = True
        if box.spec.command:
            log = await asyncio.to_thread(open, box.directory / "entry.log", "ab")
            try:
                box.entry = await asyncio.create_subprocess_exec(
                    *[box.to_host(a) for a in box.spec.command],
                    cwd=box.directory / "workspace",
                    env=self._env(box, None),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                log.close()

    async def _halt(self, box: _Box) -> None:
        box.running = False
        entry, box.entry = box.entry, None
        if entry is not None and entry.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.wait(), STOP_GRACE_SECONDS)
        if entry is not None:
            # Whatever the entry command left in its group goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.pid, signal.SIGKILL)
            await entry.wait()
            close_transport(entry)
        for pid in list(box.execs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    async def start(self, ref: str) -> None:
        """Relaunch the entry command; a running box is left alone."""
        box = self._box(ref)
        async with box.lock:
            if self._status(box) != "running":
                await self._halt(box)
                await self._launch(box)

    async def stop(self, ref: str) -> None:
        """SIGTERM (then SIGKILL) the entry command and in-flight execs."""
        box = self._box(ref)
        async with box.lock:
            await self._halt(box)

    async def delete(self, ref: str) -> None:
        """Stop and remove the box."""
        box = self._box(ref)
        async with box.lock:
            await self._halt(box)
            self._boxes.pop(ref, None)
            await asyncio.to_thread(shutil.rmtree, box.directory, True)

    def _status(self, box: _Box) -> ProviderStatus:
        if not box.running:
            return "stopped"
        if box.entry is not None and box.entry.returncode is not None:
            return "stopped" if box.entry.returncode == 0 else "failed"
        return "running"

    async def status(self, ref: str) -> ProviderStatus:
        """running, stopped, or failed (entry command exited non-zero on its own)."""
        return self._status(self._box(ref))

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """Fake sandboxes are host processes: their ports are the host's."""
        self._running_box(ref)
        return loopback_endpoint(port)

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        """Boxes whose labels include ``labels``."""
        wanted = dict(labels or {}).items()
        return [self._describe(b) for b in self._boxes.values() if wanted <= dict(b.spec.labels).items()]

    def _describe(self, box: _Box) -> ProviderSandbox:
        requested = box.spec.resources
        return ProviderSandbox(
            provider_object_id=box.ref,
            status=self._status(box),
            labels=dict(box.spec.labels),
            image=box.spec.image,
            created_at=box.created_at,
            # Nothing is enforced, but services see the usual shape.
            resources=Resources(cpu=requested.cpu, memory_mb=requested.memory_mb, pids=requested.pids),
        )

    # -- commands and files -----------------------------------------------------

    async def _workdir(self, ref: str, argv: Sequence[str], cwd: str | None) -> tuple[_Box, Path | None]:
        """The box and host directory of a command; ``None`` when ``cwd`` is not a directory."""
        check_argv(argv)
        box = self._running_box(ref)
        try:
            workdir = box.host_path(cwd or "/workspace")
        except PermissionError:
            return box, None
        return box, workdir if await asyncio.to_thread(workdir.is_dir) else None

    @staticmethod
    def _failed_start(argv: Sequence[str], cwd: str | None, exc: OSError | None) -> ExecResult:
        """What a shell reports when ``cwd`` is missing (exc ``None``) or ``argv[0]`` cannot run."""
        if exc is None:  # as bwrap's failed --chdir: a result, not an error
            return ExecResult(exit_code=1, stdout=b"", stderr=f"cannot chdir to {cwd}\n".encode())
        return ExecResult(
            exit_code=127 if isinstance(exc, FileNotFoundError) else 126,
            stdout=b"",
            stderr=f"{argv[0]}: {exc.strerror}\n".encode(),
        )

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
        """Run ``argv`` on the host in the box; background children end with it (as in local)."""
        box, workdir = await self._workdir(ref, argv, cwd)
        if workdir is None:
            return self._failed_start(argv, cwd, None)
        try:
            result = await run_process(
                [box.to_host(a) for a in argv],
                env=self._env(box, env),
                timeout=timeout,
                stdin=stdin,
                max_output_bytes=max_output_bytes,
                cwd=str(workdir),
                track=box.execs,
                kill_group_on_exit=True,
            )
        except OSError as exc:  # the program is missing or not executable: a result, as in a shell
            return self._failed_start(argv, cwd, exc)
        return ExecResult(
            exit_code=result.exit_code,
            stdout=box.from_host(result.stdout),
            stderr=box.from_host(result.stderr),
            timed_out=result.timed_out,
            truncated=result.truncated,
            duration_ms=result.duration_ms,
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
        """``exec`` with output yielded as it comes (host paths mapped back per chunk)."""
        box, workdir = await self._workdir(ref, argv, cwd)
        if workdir is None:
            failed: ExecResult | None = self._failed_start(argv, cwd, None)
        else:
            try:
                events = stream_process(
                    [box.to_host(a) for a in argv],
                    env=self._env(box, env),
                    timeout=timeout,
                    stdin=stdin,
                    max_output_bytes=max_output_bytes,
                    cwd=str(workdir),
                    track=box.execs,
                    kill_group_on_exit=True,
                )
                async with aclosing(events):
                    async for event in events:
                        yield (
                            OutputChunk(event.stream, box.from_host(event.data))
                            if isinstance(event, OutputChunk)
                            else event
                        )
                return
            except OSError as exc:
                failed = self._failed_start(argv, cwd, exc)
        assert failed is not None
        yield OutputChunk("stderr", failed.stderr)
        yield replace(failed, stderr=b"")

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Stream the file in 64 KiB chunks read in a thread."""
        return self._read(ref, path)

    async def _read(self, ref: str, path: str) -> AsyncIterator[bytes]:
        box = self._running_box(ref)
        handle = await asyncio.to_thread(open, box.host_path(path), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                yield chunk
        finally:
            handle.close()

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Write chunk by chunk (parents created)."""
        box = self._running_box(ref)
        target = box.host_path(path)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        handle = await asyncio.to_thread(open, target, "wb")
        try:
            async for chunk in data:
                await asyncio.to_thread(handle.write, chunk)
        finally:
            handle.close()

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Host ``tar -c`` of the mapped directory."""
        return self._export(ref, path)

    async def _export(self, ref: str, path: str) -> AsyncIterator[bytes]:
        box = self._running_box(ref)
        source = box.host_path(path)
        if not await asyncio.to_thread(source.is_dir):
            code = errno.ENOTDIR if source.exists() else errno.ENOENT
            raise OSError(code, os.strerror(code), path)

        def check(status: int, stderr: bytes) -> None:
            if status not in (0, 1):
                raise os_error(status, stderr, path)

        argv = ["tar", "-C", str(source), "--numeric-owner", "-cf", "-", "."]
        async with aclosing(stream_output(argv, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, check=check)) as out:
            async for chunk in out:
                yield chunk

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Host ``tar -x`` into the mapped directory (created)."""
        box = self._running_box(ref)
        target = box.host_path(path)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)

        def check(status: int, stderr: bytes) -> None:
            if status != 0:
                raise BadRequest(f"tar extraction into {path} failed: {stderr.decode(errors='replace').strip()}")

        argv = ["tar", "-C", str(target), "-xpf", "-", "--no-same-owner"]
        await feed_input(argv, data, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, check=check)
