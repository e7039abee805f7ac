"""Background processes: started by one request, served by any replica from the sandbox's files.

A process runs under the supervisor of ``process_scripts``; every operation is
an exec of one of its scripts, so it works on every provider. Where a process
may outlive the exec that started it (``Capabilities.detached_processes``)
the start exec returns at once; elsewhere (local sandboxes: one pid namespace
per exec) this service holds the start exec open for the process's life, so
those processes end with the service, while their logs stay in the sandbox.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime

from app.errors import ProcessConflict, ProcessNotFound, ProviderError
from app.logging import get_logger
from app.providers.base import ExecResult, OutputChunk, Provider, StreamName
from app.providers.streaming import collect
from app.schemas.processes import LogStream, ProcessView, SignalName, StartProcessRequest
from app.services import process_scripts as scripts
from app.services.sandboxes import DEFAULT_CWD, command_line, resolve_sandbox_path
from app.settings import Settings
from app.storage.state.sandboxes import SandboxRecord

log = get_logger("processes")

#: Seconds one bookkeeping exec (list, signal, stdin) may take.
SCRIPT_TIMEOUT = 30.0
#: ``WRITE_STDIN`` exit codes.
_STDIN_CLOSED, _PROCESS_ENDED = 3, 4
_MISSING = 2


class ProcessService:
    """Start, list, feed, signal and read background processes of running sandboxes."""

    def __init__(
        self, settings: Settings, provider: Provider, running: Callable[[str], Awaitable[SandboxRecord]]
    ) -> None:
        self.settings = settings
        self.provider = provider
        self._running = running
        #: Start execs held open for processes that cannot outlive them, by (ref, pid).
        self._held: dict[tuple[str, str], asyncio.Task[ExecResult]] = {}

    async def aclose(self) -> None:
        """Release held start execs (their processes end: they cannot outlive the service here)."""
        tasks = list(self._held.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._held.clear()

    def _release(self, ref: str, pid: str, task: asyncio.Task[ExecResult]) -> None:
        """A held start exec ended: forget it; how it ended is the process's files' business."""
        self._held.pop((ref, pid), None)
        if not task.cancelled() and task.exception() is not None:
            # Typically the sandbox stopped under it; the heartbeat then reads as exited.
            log.info("process.hold_ended", ref=ref, pid=pid, error=str(task.exception()))

    async def _ref(self, any_id: str) -> str:
        record = await self._running(any_id)
        assert record.provider_object_id is not None
        return record.provider_object_id

    async def _sh(self, ref: str, script: str, *args: str, stdin: bytes | None = None) -> ExecResult:
        return await self.provider.exec(ref, ["sh", "-c", script, "sh", *args], timeout=SCRIPT_TIMEOUT, stdin=stdin)

    @staticmethod
    def _dir(pid: str) -> str:
        return f"{scripts.PROC_ROOT}/{pid}"

    # -- start and read ---------------------------------------------------------

    async def start(self, any_id: str, request: StartProcessRequest) -> ProcessView:
        """Start ``request.command`` in the background; answers once it runs."""
        record = await self._running(any_id)
        assert record.provider_object_id is not None
        ref = record.provider_object_id
        pid = secrets.token_hex(6)
        argv, env = command_line(record, request.command, request.env)
        cwd = resolve_sandbox_path(request.cwd) if request.cwd else DEFAULT_CWD
        meta = {"command": request.command, "cwd": cwd, "started_at": datetime.now(UTC).isoformat()}
        detach = self.provider.capabilities.detached_processes
        start = [
            "sh",
            "-c",
            scripts.START,
            "sh",
            self._dir(pid),
            str(self.settings.process_log_max_bytes),
            json.dumps(meta, separators=(",", ":")),
            "detach" if detach else "hold",
            scripts.SUPERVISE,
            *argv,
        ]
        if detach:
            result = await self.provider.exec(ref, start, timeout=SCRIPT_TIMEOUT, cwd=cwd, env=env)
            if result.exit_code != 0:
                raise ProviderError(f"could not start the process: {_tail(result)}", sandbox_id=record.id)
        else:
            events = self.provider.exec_stream(ref, start, timeout=self.settings.process_max_seconds, cwd=cwd, env=env)
            task = asyncio.ensure_future(collect(events))
            self._held[(ref, pid)] = task
            task.add_done_callback(lambda done: self._release(ref, pid, done))
        started = await self._sh(ref, scripts.WAIT_STARTED, self._dir(pid))
        if started.exit_code != 0:
            held = self._held.get((ref, pid))
            if held is not None:
                held.cancel()
            raise ProviderError(f"the process did not start: {_tail(started)}", sandbox_id=record.id)
        log.info("process.started", sandbox_id=record.id, pid=pid, held=not detach)
        return await self._get(ref, pid)

    async def list(self, any_id: str) -> list[ProcessView]:
        """Every process the sandbox keeps files of, oldest first."""
        views = await self._views(await self._ref(any_id), "*")
        return sorted(views, key=lambda v: v.started_at)

    async def get(self, any_id: str, pid: str) -> ProcessView:
        return await self._get(await self._ref(any_id), pid)

    async def _get(self, ref: str, pid: str) -> ProcessView:
        views = await self._views(ref, pid)
        if not views:
            raise ProcessNotFound(f"no process {pid!r} in this sandbox", pid=pid)
        return views[0]

    async def _views(self, ref: str, pattern: str) -> builtins.list[ProcessView]:
        result = await self._sh(ref, scripts.LIST, scripts.PROC_ROOT, pattern)
        if result.exit_code != 0:
            raise ProviderError(f"could not list processes: {_tail(result)}")
        cap = self.settings.process_log_max_bytes
        views = []
        for line in result.stdout.decode(errors="replace").splitlines():
            pid, status, code, out, err, stdin, meta = line.split("\t", 6)
            fields = json.loads(meta)
            views.append(
                ProcessView(
                    pid=pid,
                    command=fields["command"],
                    cwd=fields["cwd"],
                    started_at=datetime.fromisoformat(fields["started_at"]),
                    status="exited" if status == "exited" else "running",
                    exit_code=int(code) if code.strip().isdigit() else None,
                    stdout_bytes=int(out.strip()),
                    stderr_bytes=int(err.strip()),
                    stdin_closed=stdin == "closed",
                    truncated=max(int(out.strip()), int(err.strip())) >= cap,
                )
            )
        return views

    # -- control ------------------------------------------------------------------

    async def write_stdin(self, any_id: str, pid: str, data: bytes, *, close: bool) -> ProcessView:
        """Append ``data`` to the process's stdin, then (``close``) end it."""
        ref = await self._ref(any_id)
        view = await self._get(ref, pid)
        if data:
            result = await self._sh(ref, scripts.WRITE_STDIN, self._dir(pid), stdin=data)
            if result.exit_code == _STDIN_CLOSED:
                raise ProcessConflict("the process's stdin is closed", pid=pid)
            if result.exit_code == _PROCESS_ENDED or result.timed_out:
                # Timed out: the process stopped reading and its pipe is full (or it just ended).
                raise ProcessConflict("the process does not take input (it ended or stopped reading)", pid=pid)
            if result.exit_code != 0:
                raise ProviderError(f"could not write to the process's stdin: {_tail(result)}")
        if close:
            await self._request(ref, pid, "close")
        return await self._get(ref, pid) if data or close else view

    async def signal(self, any_id: str, pid: str, name: SignalName) -> ProcessView:
        """Ask the supervisor to send ``name`` to the process group (delivered within ~0.1 s)."""
        ref = await self._ref(any_id)
        view = await self._get(ref, pid)
        if view.status == "exited":
            raise ProcessConflict(f"process {pid!r} has exited", pid=pid)
        await self._request(ref, pid, name)
        return view

    async def _request(self, ref: str, pid: str, what: str) -> None:
        result = await self._sh(ref, scripts.REQUEST, self._dir(pid), what)
        if result.exit_code == _MISSING:
            raise ProcessNotFound(f"no process {pid!r} in this sandbox", pid=pid)
        if result.exit_code != 0:
            raise ProviderError(f"could not reach the process's supervisor: {_tail(result)}")

    async def delete(self, any_id: str, pid: str) -> None:
        """Kill the process (if it runs) and forget it: its files are removed."""
        ref = await self._ref(any_id)
        result = await self._sh(ref, scripts.REMOVE, self._dir(pid))
        if result.exit_code == _MISSING:
            raise ProcessNotFound(f"no process {pid!r} in this sandbox", pid=pid)
        if result.exit_code != 0:
            raise ProviderError(f"could not end process {pid!r}: {_tail(result)}")
        held = self._held.get((ref, pid))
        if held is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(held), SCRIPT_TIMEOUT)

    # -- logs -------------------------------------------------------------------------

    async def read_log(self, any_id: str, pid: str, stream: LogStream, offset: int) -> AsyncGenerator[bytes, None]:
        """One stream's log from ``offset`` as it is now (checks raise before this returns)."""
        ref = await self._ref(any_id)
        await self._get(ref, pid)
        return self._read(ref, pid, stream, offset)

    async def _read(self, ref: str, pid: str, stream: LogStream, offset: int) -> AsyncGenerator[bytes, None]:
        argv = ["sh", "-c", scripts.READ, "sh", self._dir(pid), stream, str(offset)]
        events = self.provider.exec_stream(ref, argv, timeout=self.settings.exec_max_timeout)
        try:
            async for event in events:
                if isinstance(event, OutputChunk) and event.stream == "stdout":
                    yield event.data
        finally:
            await events.aclose()

    async def follow(
        self, any_id: str, pid: str, offsets: dict[StreamName, int]
    ) -> AsyncGenerator[OutputChunk | ProcessView, None]:
        """Both streams from ``offsets`` as they grow, then the process once it exited.

        Checks raise before this returns. Closing the stream ends the followers.
        """
        ref = await self._ref(any_id)
        await self._get(ref, pid)
        return self._follow(ref, pid, dict(offsets))

    async def _follow(
        self, ref: str, pid: str, offsets: dict[StreamName, int]
    ) -> AsyncGenerator[OutputChunk | ProcessView, None]:
        queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue(maxsize=16)

        async def pump(stream: StreamName) -> None:
            argv = ["sh", "-c", scripts.FOLLOW, "sh", self._dir(pid), stream, str(offsets[stream])]
            events = self.provider.exec_stream(ref, argv, timeout=self.settings.process_max_seconds)
            try:
                async for event in events:
                    if isinstance(event, OutputChunk) and event.stream == "stdout":
                        await queue.put(OutputChunk(stream, event.data))
            finally:
                await events.aclose()
                await queue.put(None)

        tasks = [asyncio.ensure_future(pump("stdout")), asyncio.ensure_future(pump("stderr"))]
        try:
            ended = 0
            while ended < len(tasks):
                item = await queue.get()
                if item is None:
                    ended += 1
                    continue
                offsets[item.stream] += len(item.data)
                yield item
            for task in tasks:
                task.result()  # a follower's error, after what it delivered
            # The followers stop at the exit; what the streams got since then comes now.
            for stream in ("stdout", "stderr"):
                async for data in self._read(ref, pid, stream, offsets[stream]):
                    offsets[stream] += len(data)
                    yield OutputChunk(stream, data)
            yield await self._get(ref, pid)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _tail(result: ExecResult) -> str:
    return (result.stderr or result.stdout).decode(errors="replace").strip()[-300:] or f"exit {result.exit_code}"
