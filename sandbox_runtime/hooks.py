"""Repository hooks: ``.openinspect/setup.sh`` and ``.openinspect/start.sh``.

A hook's output goes to a log file in the run dir rather than a pipe: ``start.sh``
commonly launches background services that inherit stdout, and a pipe would
either keep us waiting for their EOF or kill them with SIGPIPE once we stop
reading. Background processes a hook leaves behind are reparented to the
supervisor (a subreaper) and are stopped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox_runtime.procs import kill_group

HOOK_DIR = ".openinspect"
TAIL_BYTES = 4096


@dataclass(frozen=True)
class HookResult:
    """Outcome of one hook; ``ran`` is False when the repository has no such hook."""

    name: str
    ran: bool
    returncode: int | None = None
    timed_out: bool = False
    tail: str = ""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the hook is absent or exited 0 in time."""
        return not self.ran or (self.returncode == 0 and not self.timed_out)

    def describe(self) -> str:
        """One-line failure description with the output tail."""
        reason = "timed out" if self.timed_out else f"exited {self.returncode}"
        return f"{HOOK_DIR}/{self.name}.sh {reason}: {self.tail.strip()}"


def hook_path(repo_dir: Path, name: str) -> Path:
    """Path of hook ``name`` (``setup`` or ``start``) in ``repo_dir``."""
    return repo_dir / HOOK_DIR / f"{name}.sh"


def _read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


async def run_hook(repo_dir: Path, name: str, *, timeout: float, env: Mapping[str, str], log_dir: Path) -> HookResult:
    """Run hook ``name`` with ``bash`` (``sh`` if absent) in ``repo_dir``.

    On timeout the hook's process group is killed. Never raises for a failing hook;
    the caller decides whether failure is fatal.
    """
    path = hook_path(repo_dir, name)
    if not path.is_file():
        return HookResult(name=name, ran=False)
    shell = shutil.which("bash", path=env.get("PATH")) or "/bin/sh"
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    log_file = log_dir / f"{name}.log"
    started = time.monotonic()
    with log_file.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            shell,
            str(path),
            cwd=str(repo_dir),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
    except TimeoutError:
        timed_out = True
        kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=5)
    except asyncio.CancelledError:
        kill_group(proc.pid, signal.SIGKILL)
        raise
    return HookResult(
        name=name,
        ran=True,
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        tail=_read_tail(log_file),
        duration=round(time.monotonic() - started, 3),
    )
