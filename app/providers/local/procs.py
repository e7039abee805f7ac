"""Host process inspection for the local provider, straight from ``/proc``.

Sandbox inits are not our children (they are detached so they outlive the
service), so we cannot ``wait()`` on them. Instead a process is identified by
``(pid, start time, boot id)``: a recycled PID has another start time, and a
record from before a reboot has another boot id. Zombies count as dead.

Everything here is a cheap read of kernel memory; the functions that scan the
whole of ``/proc`` are meant to be called through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessStamp:
    """A process identity that survives PID reuse and reboots."""

    pid: int
    start_time: int
    boot_id: str


def boot_id() -> str:
    """This boot's random id, so records from before a reboot read as dead."""
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name may contain spaces and parentheses; it ends at the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def stamp(pid: int) -> ProcessStamp | None:
    """The identity of a live (non-zombie) process, or None."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    # Field 22 of stat is the start time; fields[0] is field 3 (state).
    return ProcessStamp(pid=pid, start_time=int(fields[19]), boot_id=boot_id())


def is_alive(expected: ProcessStamp) -> bool:
    """True while the very process ``expected`` describes is running."""
    current = stamp(expected.pid)
    return current is not None and current == expected


def process_group(pid: int) -> int | None:
    """The process group id of ``pid``, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[2]) if fields is not None else None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of all its threads)."""
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def _real_uid(pid_dir: Path) -> tuple[int, str] | None:
    """(real uid, state letter) of a process directory, or None."""
    try:
        text = (pid_dir / "status").read_text()
    except OSError:
        return None
    uid = state = None
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split()[1]
        elif line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return (uid, state or "?") if uid is not None else None


def pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``. Scans /proc."""
    found: list[int] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        info = _real_uid(entry)
        if info is not None and info[0] == uid and info[1] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def uids_in_use(low: int, high: int) -> set[int]:
    """Real uids in ``[low, high)`` owning a live process. Scans /proc."""
    found: set[int] = set()
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = _real_uid(entry)
            if info is not None and low <= info[0] < high and info[1] not in ("Z", "X"):
                found.add(info[0])
    return found


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``; a process that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
