"""Child processes: bounded one-shot commands and supervised long-running children.

Every child runs in its own session (process group) so that stopping it also
stops whatever it spawned: SIGTERM to the group, a grace period, then SIGKILL
to the group. The supervisor additionally becomes a child subreaper (Linux
``PR_SET_CHILD_SUBREAPER``) so that grandchildren which escape their group with
``setsid`` are reparented to it and can be found, killed and reaped; when the
supervisor runs as PID 1 of a container this reaping is required anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_READ_CHUNK = 65536


@dataclass(frozen=True)
class CommandResult:
    """Outcome of a bounded command: exit code (None when it timed out) and output."""

    returncode: int | None
    stdout: bytes
    tail: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        """True when the command exited 0 within its timeout."""
        return self.returncode == 0 and not self.timed_out


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


class _Tail:
    """Keeps the last ``limit`` bytes of a stream without holding all of it."""

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", errors="replace")


async def run_bounded(
    argv: Sequence[str],
    *,
    cwd: Path | str | None,
    env: Mapping[str, str],
    timeout: float,
    capture_stdout: bool = False,
    tail_bytes: int = 4096,
) -> CommandResult:
    """Run ``argv`` in its own process group with a hard timeout.

    stderr (and stdout unless ``capture_stdout``) feed a bounded tail used for error
    reports. On timeout the whole group is killed and ``timed_out`` is set.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd) if cwd is not None else None,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if capture_stdout else asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    tail = _Tail(tail_bytes)
    captured = bytearray()

    async def pump(stream: asyncio.StreamReader | None, keep: bool) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_READ_CHUNK):
            if keep:
                captured.extend(chunk)
            else:
                tail.add(chunk)

    pumps = asyncio.gather(pump(proc.stdout, capture_stdout), pump(proc.stderr, False))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        # Whatever happened (timeout, cancellation), nothing of the group may outlive us.
        kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=5)
        try:
            await asyncio.wait_for(asyncio.shield(pumps), timeout=2)
        except Exception:
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumps
    return CommandResult(
        returncode=None if timed_out else proc.returncode,
        stdout=bytes(captured),
        tail=tail.text(),
        timed_out=timed_out,
    )


class ManagedProcess:
    """A long-running child in its own process group whose output lines go to ``on_line``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        on_line: Callable[[str], None],
        pid_file: Path | None = None,
        stdin: bool = False,
    ) -> None:
        self.name = name
        self._stdin = stdin
        self._argv = list(argv)
        self._cwd = cwd
        self._env = dict(env)
        self._on_line = on_line
        self._pid_file = pid_file
        self._proc: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The leader's pid (also the group id), None before start."""
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """Exit code once exited (negative = killed by that signal)."""
        return self._proc.returncode if self._proc else None

    async def start(self) -> None:
        """Spawn the child in a new session; write its pid file.

        Raises:
            OSError: the executable cannot be started.
        """
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            cwd=str(self._cwd),
            env=self._env,
            stdin=asyncio.subprocess.PIPE if self._stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        if self._pid_file is not None:
            self._pid_file.parent.mkdir(parents=True, exist_ok=True)
            self._pid_file.write_text(f"{self._proc.pid}\n")
        self._relay = asyncio.create_task(self._relay_output(self._proc.stdout))

    async def _relay_output(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream limit: skip the chunk
                line = await stream.read(_READ_CHUNK)
            if not line:
                return
            self._on_line(line.decode("utf-8", errors="replace"))

    async def send_and_close(self, data: bytes) -> bool:
        """Write ``data`` to the child's stdin (started with ``stdin=True``) and close it.

        Returns False when the child is gone (or never read it): nothing was delivered.
        """
        assert self._proc is not None and self._proc.stdin is not None, "start(stdin=True) first"
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
            self._proc.stdin.close()
            await self._proc.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return self._proc.returncode is None

    async def wait(self) -> int:
        """Wait for the leader to exit; returns its exit code."""
        assert self._proc is not None, "start() first"
        code = await self._proc.wait()
        if self._relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._relay), timeout=2)
        return code

    async def stop(self, grace: float) -> int | None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL the group.

        The group is SIGKILLed even after a clean exit of the leader, so helpers it
        left behind in its group do not linger.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGTERM)
            kill_group(proc.pid, signal.SIGCONT)  # a stopped (hung, SIGSTOPped) group cannot act on SIGTERM
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=grace)
        kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=5)
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relay
        if self._pid_file is not None:
            with contextlib.suppress(OSError):
                self._pid_file.unlink()
        return proc.returncode


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Ask Linux to reparent orphaned descendants to this process; False where unsupported."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def make_undumpable() -> bool:
    """Hide this process's memory and ``/proc/<pid>/environ`` from same-uid processes.

    The supervisor and the bridge hold the sandbox and VCS tokens in their environment,
    and the agent's commands run as the same user. Non-dumpable processes' /proc files
    belong to root, so the agent cannot read the tokens there. Children are unaffected
    (``execve`` resets the flag), which is why the env server gets no tokens at all.
    """
    return _prctl(_PR_SET_DUMPABLE, 0)


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, None if it vanished."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def direct_children(parent: int) -> list[tuple[int, str]]:
    """(pid, state) of the processes whose parent is ``parent``."""
    found: list[tuple[int, str]] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[1] == parent:
            found.append((int(entry), fields[0]))
    return found


def reap_orphans(managed: set[int]) -> list[int]:
    """Reap zombie children that are not ``managed`` (asyncio reaps those itself)."""
    reaped: list[int] = []
    for pid, state in direct_children(os.getpid()):
        if state == "Z" and pid not in managed:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                reaped.append(pid)
    return reaped


def kill_orphans(managed: set[int], rounds: int = 10) -> list[int]:
    """SIGKILL every live child that is not ``managed`` (orphans reparented to us), then reap.

    Repeated because a killed orphan's own children are reparented to us in turn.
    """
    killed: list[int] = []
    for _ in range(rounds):
        batch: list[int] = []
        for pid, state in direct_children(os.getpid()):
            if pid in managed or state == "Z":
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                batch.append(pid)
        for pid in batch:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        reap_orphans(managed)
        killed += batch
        if not batch:
            break
    return killed
