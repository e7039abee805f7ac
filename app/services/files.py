"""Files in and out of a sandbox over HTTP: streamed, atomic uploads, and one map from OS errors to answers.

Providers report file trouble with the built-in ``OSError`` subclasses (as the
provider contract documents). Here, once, each becomes a specific 4xx with a
machine code, so no file operation ever ends as a 500:

    ENOENT -> 404 file_not_found        EISDIR -> 400 is_a_directory
    ENOTDIR -> 400 not_a_directory      EINVAL (not a regular file) -> 400 not_a_regular_file
    EACCES, EPERM -> 403 permission_denied   EROFS -> 403 read_only_path
    ENAMETOOLONG -> 400 name_too_long   EEXIST, ELOOP -> 400 path_conflict
    ENOSPC, EDQUOT -> 413 no_space      any other -> 400 file_error

A sandbox that is gone or stopped is the provider's own error (404/409/503).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import PurePosixPath

from app.errors import (
    FileOperationFailed,
    IsADirectory,
    NameTooLong,
    NoSpace,
    NotADirectory,
    NotARegularFile,
    PathConflict,
    PayloadTooLarge,
    PermissionDenied,
    ReadOnlyPath,
    SandboxControlError,
    SandboxFileNotFound,
)
from app.logging import get_logger
from app.providers.base import Provider
from app.services.sandboxes import SandboxService, resolve_sandbox_path
from app.streams import aclose_stream

log = get_logger("files")

#: Longest file name (one path component) the common filesystems take, in bytes.
MAX_NAME_BYTES = 255
#: Exit status of the move script when the target is a directory.
_MOVE_IS_DIR = 3
_MOVE_SCRIPT = f'if [ -d "$2" ] && [ ! -L "$2" ]; then exit {_MOVE_IS_DIR}; fi; exec mv -f -- "$1" "$2"'
_BY_ERRNO: dict[int, type[SandboxControlError]] = {
    errno.ENOENT: SandboxFileNotFound,
    errno.EISDIR: IsADirectory,
    errno.ENOTDIR: NotADirectory,
    errno.EINVAL: NotARegularFile,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EROFS: ReadOnlyPath,
    errno.ENAMETOOLONG: NameTooLong,
    errno.EEXIST: PathConflict,
    errno.ELOOP: PathConflict,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
}
_BY_TYPE: tuple[tuple[type[OSError], type[SandboxControlError]], ...] = (
    (FileNotFoundError, SandboxFileNotFound),
    (IsADirectoryError, IsADirectory),
    (NotADirectoryError, NotADirectory),
    (PermissionError, PermissionDenied),
    (FileExistsError, PathConflict),
)
#: What ``mv``/``cat`` print, for tools that only tell us in words.
_BY_MESSAGE = (
    (re.compile(r"read-only file system", re.I), errno.EROFS),
    (re.compile(r"permission denied|operation not permitted", re.I), errno.EACCES),
    (re.compile(r"no space left|quota exceeded", re.I), errno.ENOSPC),
    (re.compile(r"not a directory", re.I), errno.ENOTDIR),
    (re.compile(r"file name too long", re.I), errno.ENAMETOOLONG),
    (re.compile(r"no such file", re.I), errno.ENOENT),
    (re.compile(r"file exists", re.I), errno.EEXIST),
    (re.compile(r"is a directory", re.I), errno.EISDIR),
)


def file_error(exc: OSError, path: str) -> SandboxControlError:
    """The answer for ``exc`` raised while working on ``path`` in a sandbox."""
    kind: type[SandboxControlError] | None = _BY_ERRNO.get(exc.errno or -1)
    if kind is None:
        kind = next((mapped for builtin, mapped in _BY_TYPE if isinstance(exc, builtin)), FileOperationFailed)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if kind is NotARegularFile:
        reason = "not a regular file (devices, fifos, sockets and directories are not served)"
    return kind(f"{path}: {reason}", path=path)


def message_error(message: str, path: str, fallback: str) -> SandboxControlError:
    """The answer for a file tool (``mv``, ``stat``, ...) that failed on ``path`` saying ``message``."""
    message = message.strip()
    code = next((code for pattern, code in _BY_MESSAGE if pattern.search(message)), errno.EIO)
    return file_error(OSError(code, message[-500:] or fallback), path)


@contextlib.contextmanager
def mapped_file_errors(path: str) -> Iterator[None]:
    """Turn the ``OSError`` of a provider's file operation into its answer."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, SandboxControlError):  # ProviderUnavailable is a ConnectionError
            raise
        raise file_error(exc, path) from exc


def check_names(path: str) -> None:
    """Refuse a path with a component the filesystem cannot hold, before anything is written."""
    for part in PurePosixPath(path).parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise NameTooLong(f"{path}: a file name is longer than {MAX_NAME_BYTES} bytes", path=path)


class FileService:
    """Read and write single files of running sandboxes."""

    def __init__(self, sandboxes: SandboxService, provider: Provider) -> None:
        self._sandboxes = sandboxes
        self._provider = provider

    async def read(self, any_id: str, path: str) -> AsyncIterator[bytes]:
        """Open a regular file for streaming; every refusal is raised before the first byte."""
        ref = await self._sandboxes.running_ref(any_id)
        target = resolve_sandbox_path(path)
        check_names(target)
        stream = self._provider.read_file(ref, target)
        with mapped_file_errors(target):
            first = await anext(stream, b"")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                with mapped_file_errors(target):
                    async for chunk in stream:
                        yield chunk
            finally:
                await aclose_stream(stream)

        return chunks()

    async def write(self, any_id: str, path: str, body: AsyncIterator[bytes], *, limit: int) -> int:
        """Write a file from a byte stream, atomically: a broken upload leaves the old file (or none).

        The bytes go to a short hidden name beside the target, then move onto it;
        a target that is a directory is refused, never moved into.
        """
        ref = await self._sandboxes.running_ref(any_id)
        target = resolve_sandbox_path(path)
        check_names(target)
        partial = str(PurePosixPath(target).parent / f".sandbox-upload-{secrets.token_hex(4)}")
        written = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal written
            async for chunk in body:
                written += len(chunk)
                if written > limit:
                    raise PayloadTooLarge(f"upload exceeds {limit} bytes")
                yield chunk

        try:
            try:
                await self._provider.write_file(ref, partial, counted())
            except OSError as exc:
                if isinstance(exc, SandboxControlError):
                    raise
                raise await self._write_error(ref, exc, target) from exc
            moved = await self._provider.exec(ref, ["sh", "-c", _MOVE_SCRIPT, "sh", partial, target], timeout=30)
        except BaseException:
            await asyncio.shield(self._discard(ref, partial))
            raise
        if moved.exit_code != 0:
            await self._discard(ref, partial)
            if moved.exit_code == _MOVE_IS_DIR:
                raise IsADirectory(f"{target}: is a directory", path=target)
            raise message_error(moved.stderr.decode(errors="replace"), target, "cannot move the upload into place")
        return written

    async def _write_error(self, ref: str, exc: OSError, target: str) -> SandboxControlError:
        """Why writing beside ``target`` failed, as the caller should hear it.

        A target that is a directory is what matters then (its parent may well be
        read-only, e.g. ``/``); a path whose directories cannot be made (a dangling
        symlink on the way) is the caller's path, not a missing file.
        """
        probe = await self._provider.exec(ref, ["sh", "-c", '[ -d "$1" ] && [ ! -L "$1" ]', "sh", target], timeout=30)
        if probe.exit_code == 0:
            return IsADirectory(f"{target}: is a directory", path=target)
        if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
            return PathConflict(
                f"{target}: a directory on the path cannot be made ({exc.strerror or exc})", path=target
            )
        return file_error(exc, target)

    async def _discard(self, ref: str, path: str) -> None:
        try:
            await self._provider.exec(ref, ["rm", "-f", "--", path], timeout=30)
        except SandboxControlError as exc:
            log.warning("files.upload_cleanup_failed", error=str(exc))
