"""Wake up when something lands in a directory (Linux inotify), for a cheap and prompt wait.

A warm pool member may wait hours for its claim file, and the moment it arrives is the
start of the claim's critical path. Polling trades one against the other (every 50 ms:
~2 % of a core per idle member; every second: up to a second of latency); inotify gives
both. Where inotify is unavailable (another OS, a sandbox runtime without it), waits
simply time out, so callers keep a slow poll as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from pathlib import Path
from types import TracebackType

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100


class DirectoryWatch:
    """``with DirectoryWatch(d) as watch: await watch.changed(timeout)`` wakes on writes, renames, creations."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        self._changed = asyncio.Event()

    @property
    def active(self) -> bool:
        """True when inotify watches the directory (else :meth:`changed` only times out)."""
        return self._fd is not None

    def __enter__(self) -> DirectoryWatch:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        except (OSError, AttributeError):
            return self
        if fd < 0:
            return self
        mask = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        if int(libc.inotify_add_watch(fd, os.fsencode(self.directory), mask)) < 0:
            os.close(fd)
            return self
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._drain)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _drain(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        self._changed.set()

    async def changed(self, timeout: float) -> bool:
        """Wait until something landed in the directory since the last call (True) or ``timeout`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        changed = self._changed.is_set()
        self._changed.clear()
        return changed
