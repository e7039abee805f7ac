"""Files and tars of local sandboxes, moved by helpers running *inside* them.

The service never opens a sandbox path on the host: a symlink in the
workspace could otherwise point a root-owned write at the host. ``cat`` and
``tar`` run as the sandbox user, in the sandbox's namespaces, and the bytes
flow through pipes in 64 KiB chunks (``local_io``), so memory stays bounded
whatever the size.

The helper scripts check preconditions first and report them as
``ERRNO_EXIT_BASE + errno`` so callers get ``FileNotFoundError``,
``IsADirectoryError``, ... rather than a parsed message; later failures are
mapped from the helper's stderr (run with ``LC_ALL=C``).
"""

from __future__ import annotations

import errno
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from app.errors import BadRequest
from app.providers.local_bwrap import HOST_ENV
from app.providers.local_io import (
    ERRNO_EXIT_BASE,
    OutcomeCheck,
    errno_from_stderr,
    feed_input,
    os_error,
    stream_output,
)

if TYPE_CHECKING:
    from app.providers.local import LocalProvider

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

#: Helpers' messages must be parseable whatever LANG the sandbox sets.
_HELPER_ENV = {"LC_ALL": "C"}


def check_path(path: str) -> None:
    """Sandbox paths are absolute and NUL-free."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise BadRequest(f"path must be an absolute path: {path!r}")


class FileOps:
    """The file half of ``LocalProvider``, built on its sandboxed-spawn helpers."""

    def __init__(self, provider: LocalProvider) -> None:
        self._provider = provider

    async def _stream(self, ref: str, script: str, path: str, check: OutcomeCheck) -> AsyncGenerator[bytes, None]:
        check_path(path)
        meta, record = await self._provider.running(ref)
        with self._provider.sandboxed(meta, env=_HELPER_ENV) as fd:
            argv = self._provider.spawn_argv(meta, record.limits, fd, ["sh", "-c", script, "sh", path])
            stream = stream_output(
                argv, env=HOST_ENV, check=check, pass_fds=(fd,), track=self._provider.exec_registry(ref)
            )
            async with aclosing(stream):
                async for chunk in stream:
                    yield chunk

    async def _feed(self, ref: str, script: str, path: str, data: AsyncIterator[bytes], check: OutcomeCheck) -> None:
        check_path(path)
        meta, record = await self._provider.running(ref)
        with self._provider.sandboxed(meta, env=_HELPER_ENV) as fd:
            argv = self._provider.spawn_argv(meta, record.limits, fd, ["sh", "-c", script, "sh", path])
            await feed_input(
                argv, data, env=HOST_ENV, check=check, pass_fds=(fd,), track=self._provider.exec_registry(ref)
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

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """``tar -x`` into a directory (created); modes, mtimes and symlinks kept, owners not."""

        def check(status: int, stderr: bytes) -> None:
            if status == 0:
                return
            if status > ERRNO_EXIT_BASE or errno_from_stderr(stderr) is not None:
                raise os_error(status, stderr, path)
            raise BadRequest(f"tar extraction into {path} failed: {stderr.decode(errors='replace').strip()[-500:]}")

        await self._feed(ref, IMPORT_SCRIPT, path, data, check)


def _strict(path: str) -> OutcomeCheck:
    def check(status: int, stderr: bytes) -> None:
        if status != 0:
            raise os_error(status, stderr, path)

    return check
