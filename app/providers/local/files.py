"""Files and tars of local sandboxes, moved by helpers running *inside* them.

The service never opens a sandbox path on the host: a symlink in the
workspace could otherwise point a root-owned write at the host. ``cat`` and
``tar`` run as the sandbox user, in the sandbox's namespaces, and the bytes
flow through pipes in 64 KiB chunks (``io``), so memory stays bounded
whatever the size.

The helper scripts check preconditions first and report them as
``ERRNO_EXIT_BASE + errno`` so callers get ``FileNotFoundError``,
``IsADirectoryError``, ... rather than a parsed message; later failures are
mapped from the helper's stderr (run with ``LC_ALL=C``).

``FileOps`` knows nothing of the provider: it asks a ``Spawner`` to prepare
each helper (the provider checks that the sandbox runs and builds the bwrap
command line). ``import_tar`` of a stream that can be split into lanes
(``app.providers.base.LaneSplittable``, a snapshot section) runs several
``tar -x`` at once over disjoint subtrees: creating many small files is
CPU-bound kernel work that one tar does on one core.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from app.errors import BadRequest
from app.providers.base import lane_rounds
from app.providers.local.bwrap import HOST_ENV
from app.providers.local.io import (
    ERRNO_EXIT_BASE,
    OutcomeCheck,
    errno_from_stderr,
    feed_input,
    os_error,
    stream_output,
)

_ENOENT, _ENOTDIR, _EISDIR, _EINVAL, _EACCES = (
    ERRNO_EXIT_BASE + code for code in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EACCES)
)

READ_SCRIPT = f"""
if [ -d "$1" ]; then exit {_EISDIR}; fi
if [ ! -e "$1" ]; then exit {_ENOENT}; fi
if [ ! -f "$1" ]; then exit {_EINVAL}; fi
if [ ! -r "$1" ]; then exit {_EACCES}; fi
exec cat -- "$1"
"""

WRITE_SCRIPT = f"""
if [ -d "$1" ]; then exit {_EISDIR}; fi
mkdir -p -- "$(dirname -- "$1")" || exit 1
exec cat > "$1"
"""

EXPORT_SCRIPT = f"""
if [ ! -e "$1" ]; then exit {_ENOENT}; fi
if [ ! -d "$1" ]; then exit {_ENOTDIR}; fi
exec tar -C "$1" --numeric-owner -cf - .
"""

# -p keeps modes exactly (the sandbox user is not root, so tar would apply the umask).
IMPORT_SCRIPT = f"""
if [ -e "$1" ] && [ ! -d "$1" ]; then exit {_ENOTDIR}; fi
mkdir -p -- "$1" || exit 1
exec tar -C "$1" -xpf - --no-same-owner
"""

#: How far a restore stream may run ahead of ``tar -x`` (pipe plus transport buffer):
#: the snapshot reader produces in bursts, tar consumes file by file; with 64 KiB
#: each would wait for the other.
IMPORT_BUFFER_BYTES = 1 << 20
#: Concurrent ``tar -x`` for a stream that can be split into lanes: one per core, at most
#: 2 (more would compete with the service, which decompresses, checks and feeds them).
IMPORT_LANES = min(2, os.cpu_count() or 1)

#: Helpers' messages must be parseable whatever LANG the sandbox sets.
_HELPER_ENV = {"LC_ALL": "C"}


@dataclass(frozen=True)
class Spawn:
    """One helper ready to start in a sandbox."""

    #: The host command line (bwrap with the helper's argv).
    argv: list[str]
    #: File descriptors the command line refers to (its bwrap options).
    pass_fds: tuple[int, ...]
    #: The sandbox's set of in-flight helper pids, so ``stop`` can end them.
    track: set[int]


class Spawner(Protocol):
    """Prepares helper ``argv`` in running sandbox ``ref`` with extra ``env``.

    Raises ``SandboxNotFound`` / ``SandboxNotRunning`` on entry; the ``Spawn`` is
    valid inside the block only (its descriptors close on exit).
    """

    def __call__(
        self, ref: str, argv: Sequence[str], *, env: Mapping[str, str]
    ) -> AbstractAsyncContextManager[Spawn]: ...


def check_path(path: str) -> None:
    """Sandbox paths are absolute and NUL-free."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise BadRequest(f"path must be an absolute path: {path!r}")


class FileOps:
    """The file half of ``LocalProvider``: helpers it runs through a ``Spawner``."""

    def __init__(self, spawn: Spawner) -> None:
        self._spawn = spawn

    def _helper(self, ref: str, script: str, path: str) -> AbstractAsyncContextManager[Spawn]:
        return self._spawn(ref, ["sh", "-c", script, "sh", path], env=_HELPER_ENV)

    async def _stream(self, ref: str, script: str, path: str, check: OutcomeCheck) -> AsyncGenerator[bytes, None]:
        check_path(path)
        async with self._helper(ref, script, path) as spawn:
            stream = stream_output(spawn.argv, env=HOST_ENV, check=check, pass_fds=spawn.pass_fds, track=spawn.track)
            async with aclosing(stream):
                async for chunk in stream:
                    yield chunk

    async def _feed(
        self,
        ref: str,
        script: str,
        path: str,
        data: AsyncIterator[bytes],
        check: OutcomeCheck,
        *,
        buffer_bytes: int | None = None,
    ) -> None:
        check_path(path)
        async with self._helper(ref, script, path) as spawn:
            await feed_input(
                spawn.argv,
                data,
                env=HOST_ENV,
                check=check,
                pass_fds=spawn.pass_fds,
                track=spawn.track,
                buffer_bytes=buffer_bytes,
            )

    def read(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """``cat`` of a regular file; a directory or a missing file raises on first iteration."""
        return self._stream(ref, READ_SCRIPT, path, _strict(path))

    async def write(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """``cat > path`` after ``mkdir -p`` of its parent (not atomic: a failed upload leaves a partial file)."""
        await self._feed(ref, WRITE_SCRIPT, path, data, _strict(path))

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """``tar -c`` of a directory, entries relative to it, numeric owners."""

        def check(status: int, stderr: bytes) -> None:
            # GNU tar exits 1 when a file changed while being read: the archive is still whole.
            if status not in (0, 1):
                raise os_error(status, stderr, path)

        return self._stream(ref, EXPORT_SCRIPT, path, check)

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes], *, lanes: int) -> None:
        """``tar -x`` into a directory (created); modes, mtimes and symlinks kept, owners not.

        ``lanes``: how many ``tar -x`` may run at once when ``data`` can be split into lanes.
        """

        def check(status: int, stderr: bytes) -> None:
            if status == 0:
                return
            if status > ERRNO_EXIT_BASE or errno_from_stderr(stderr) is not None:
                raise os_error(status, stderr, path)
            raise BadRequest(f"tar extraction into {path} failed: {stderr.decode(errors='replace').strip()[-500:]}")

        rounds = lane_rounds(data, lanes)
        if rounds is None:
            await self._feed(ref, IMPORT_SCRIPT, path, data, check, buffer_bytes=IMPORT_BUFFER_BYTES)
            return
        async with aclosing(rounds):
            async for streams in rounds:
                await _together(
                    [
                        self._feed(ref, IMPORT_SCRIPT, path, stream, check, buffer_bytes=IMPORT_BUFFER_BYTES)
                        for stream in streams
                    ]
                )


async def _together(jobs: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` concurrently; at the first failure cancel the others, then raise it."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome


def _strict(path: str) -> OutcomeCheck:
    def check(status: int, stderr: bytes) -> None:
        if status != 0:
            raise os_error(status, stderr, path)

    return check
