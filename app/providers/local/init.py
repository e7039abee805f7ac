"""The detached init of a local sandbox: launch it, judge it, end it.

A running sandbox has one *keeper* (``bwrap.KEEPER_SCRIPT``) started
through ``setsid -f``: it is nobody's child, so it outlives the service, and
it stays the parent of bwrap, whose ``--die-with-parent`` would otherwise
kill the sandbox the moment its parent exited. Killing the keeper's process
group therefore tears down bwrap, the sandbox's pid 1 and, with it, the
whole pid namespace.

Stopping is graceful first: SIGTERM goes to the processes directly under the
sandbox's pid 1 (the entry command and whatever it orphaned), never to bwrap
(a dying bwrap SIGKILLs at once). After the grace period everything is
killed, then swept by host uid (root service) and by cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from app.errors import ProviderError, ProviderUnavailable
from app.providers.base import ProviderStatus
from app.providers.local import procs
from app.providers.local.bwrap import HOST_ENV, KEEPER_SCRIPT, HostTools, host_argv
from app.providers.local.io import close_transport
from app.providers.local.limits import AppliedLimits, ResourceLimiter
from app.providers.local.store import InitRecord, LocalStore, SandboxMeta

#: The entry command of a sandbox created without one.
IDLE_COMMAND = ("sleep", "infinity")
#: How long ``halt`` waits after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 5.0
#: Bound on every wait for the init to appear or disappear.
INIT_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.02


def _backoff(attempt: int) -> float:
    """Poll fast while a launch is likely to finish (a few ms), then settle at 20 ms."""
    return min(0.001 * 2.0**attempt, _POLL_SECONDS)


class InitSupervisor:
    """Starts and stops the keeper-run init of each sandbox; reads its status."""

    def __init__(self, store: LocalStore, limiter: ResourceLimiter) -> None:
        self._store = store
        self._limiter = limiter

    async def launch(self, tools: HostTools, meta: SandboxMeta, limits: AppliedLimits, options_fd: int) -> None:
        """Start the keeper (bwrap options already in ``options_fd``) and wait until bwrap runs."""
        paths = self._store.paths(meta.ref)
        await asyncio.to_thread(self._store.clear_init, meta.ref)
        argv = host_argv(
            tools,
            args_fd=options_fd,
            command=meta.command or IDLE_COMMAND,
            uid=meta.uid,
            cgroup_procs=limits.procs_files,
            rlimit_options=limits.rlimit_options,
        )
        # Truncated per launch: the log holds the current run of the entry command.
        log_file = await asyncio.to_thread(open, paths.init_log, "wb")
        try:
            # setsid -f forks and exits: the keeper is reparented, not our child.
            launcher = await asyncio.create_subprocess_exec(
                *[tools.setsid, "-f", tools.sh, "-c", KEEPER_SCRIPT, "sh", str(paths.root), *argv],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=dict(HOST_ENV),
                pass_fds=(options_fd,),
            )
            try:
                await launcher.wait()
            finally:
                close_transport(launcher)
        finally:
            log_file.close()
        stamp = await self._wait_for_keeper(meta)
        record = InitRecord(
            pid=stamp.pid,
            start_time=stamp.start_time,
            boot_id=stamp.boot_id,
            cgroups=list(limits.cgroups),
            rlimit_options=list(limits.rlimit_options),
        )
        await asyncio.to_thread(self._store.save_init, meta.ref, record)
        # Running once bwrap reports its child (or, for an entry command that
        # ends at once, once the keeper is gone again: status() tells how).
        deadline = time.monotonic() + INIT_WAIT_SECONDS
        attempt = 0
        while time.monotonic() < deadline and procs.is_alive(stamp):
            with contextlib.suppress(OSError):
                if "child-pid" in await asyncio.to_thread(paths.init_status.read_text):
                    return
            await asyncio.sleep(_backoff(attempt))
            attempt += 1
        if procs.is_alive(stamp):
            raise ProviderUnavailable(f"sandbox {meta.ref}: init did not start within {INIT_WAIT_SECONDS:.0f}s")
        status_text = ""
        with contextlib.suppress(OSError):
            status_text = await asyncio.to_thread(paths.init_status.read_text)
        if "child-pid" not in status_text:
            # bwrap exited before its child ran: a bind or namespace failed.
            tail = await asyncio.to_thread(output_tail, paths.init_log)
            raise ProviderError(f"sandbox {meta.ref}: sandbox setup failed: {tail}")

    async def _wait_for_keeper(self, meta: SandboxMeta) -> procs.ProcessStamp:
        paths = self._store.paths(meta.ref)
        deadline = time.monotonic() + INIT_WAIT_SECONDS
        attempt = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                text = await asyncio.to_thread(paths.init_pid.read_text)
                if text.endswith("\n"):  # written whole by the keeper's echo
                    pid = int(text)
                    return procs.stamp(pid) or procs.ProcessStamp(pid, start_time=-1, boot_id=procs.boot_id())
            await asyncio.sleep(_backoff(attempt))
            attempt += 1
        tail = await asyncio.to_thread(output_tail, paths.init_log)
        raise ProviderError(f"sandbox {meta.ref}: init failed to start: {tail}")

    def is_running(self, record: InitRecord | None) -> bool:
        """True while the recorded init lives and no stop was asked for."""
        return record is not None and not record.stop_requested and procs.is_alive(record.stamp)

    def status_of(self, meta: SandboxMeta, record: InitRecord | None) -> ProviderStatus:
        """running while the init lives; failed if it ended badly on its own; else stopped."""
        if record is None:
            return "stopped"
        if procs.is_alive(record.stamp):
            return "running"
        if record.stop_requested:
            return "stopped"
        return "stopped" if self._store.init_exit_status(meta.ref) == 0 else "failed"

    async def halt(self, meta: SandboxMeta, exec_groups: Sequence[int]) -> None:
        """End every process of the sandbox (SIGTERM, grace, SIGKILL, sweep) and forget the init."""
        record = await asyncio.to_thread(self._store.load_init, meta.ref)
        if record is not None and procs.is_alive(record.stamp):
            if not record.stop_requested:
                record = record.model_copy(update={"stop_requested": True})
                await asyncio.to_thread(self._store.save_init, meta.ref, record)
            for pid in await asyncio.to_thread(_sandboxed_processes, record.pid):
                procs.signal_pid(pid, signal.SIGTERM)
            if not await _wait_dead(record.stamp, STOP_GRACE_SECONDS):
                if procs.process_group(record.pid) == record.pid:
                    procs.signal_group(record.pid, signal.SIGKILL)
                await _wait_dead(record.stamp, INIT_WAIT_SECONDS)
        for pid in exec_groups:
            procs.signal_group(pid, signal.SIGKILL)
        await asyncio.to_thread(self._sweep, meta, record)

    def _sweep(self, meta: SandboxMeta, record: InitRecord | None) -> None:
        """Kill anything left (by host uid, by cgroup), remove cgroups, forget the init.

        Blocking (short polling sleeps): only ever run through ``asyncio.to_thread``.
        """
        if meta.uid is not None:
            # The uid is this sandbox's alone: whatever still runs as it belongs to it.
            for _ in range(50):
                pids = procs.pids_of_uid(meta.uid)
                if not pids:
                    break
                for pid in pids:
                    procs.signal_pid(pid, signal.SIGKILL)
                time.sleep(0.002)  # in a worker thread: SIGKILL lands within a few ms
        self._limiter.release([*(record.cgroups if record else ()), *self._limiter.existing(meta.ref)])
        self._store.clear_init(meta.ref)


def _sandboxed_processes(keeper_pid: int) -> list[int]:
    """The processes directly under the sandbox's pid 1: keeper -> bwrap -> pid 1 -> these."""
    level = [keeper_pid]
    for _ in range(3):
        level = [child for pid in level for child in procs.children(pid)]
    return level


async def _wait_dead(stamp: procs.ProcessStamp, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    attempt = 0
    while procs.is_alive(stamp):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_backoff(attempt))
        attempt += 1
    return True


def output_tail(path: Path, size: int = 2000) -> str:
    """The end of an init's output (its log), for reports; an error text when unreadable."""
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip() or "(no output)"
    except OSError as exc:
        return str(exc)
