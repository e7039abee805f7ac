"""Files and tars of Daytona sandboxes, streamed through the SDK's file API.

Single files use the SDK's streaming transfers (``download_file_stream`` and
``upload_file_stream``: multipart bodies read and written in chunks), so
memory stays flat whatever the size. A tar is spooled through a file in the
sandbox's ``/tmp``: ``tar`` writes it there (export) or reads it from there
(import), and the file moves by the same streaming transfers; the sandbox
therefore needs free disk for one archive while it moves.

Uploads are never retried: the source stream is consumed by the first try.

``DaytonaFiles`` knows nothing of the provider: it gets the call boundary
(``DaytonaCalls``), a way to find a running sandbox and a way to run a
command in it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import posixpath
import secrets
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from daytona import DaytonaError

from app.errors import BadRequest, ProviderError
from app.providers.base import ExecResult
from app.providers.daytona.errors import DaytonaCalls, status_of, translate
from app.providers.daytona.exec import STATE_DIR

log = logging.getLogger(__name__)

#: Seconds a tar may take inside the sandbox.
TAR_TIMEOUT = 3600.0


def check_path(path: str) -> None:
    """Sandbox paths are absolute and NUL-free."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise BadRequest(f"path must be absolute: {path!r}", field="path")


class RunCommand(Protocol):
    """Runs ``argv`` in sandbox ``ref`` (``Provider.exec``)."""

    def __call__(
        self, ref: str, argv: Sequence[str], *, timeout: float, max_output_bytes: int
    ) -> Awaitable[ExecResult]: ...


class DaytonaFiles:
    """File transfer operations on Daytona sandboxes.

    ``running``: the SDK sandbox of a running ``ref`` (``SandboxNotRunning`` otherwise);
    ``run``: a command in it, for the tars and spool files.
    """

    def __init__(self, calls: DaytonaCalls, running: Callable[[str], Awaitable[Any]], run: RunCommand) -> None:
        self._calls = calls
        self._running = running
        self._run = run

    async def _file_info(self, sandbox: Any, path: str) -> Any:
        """The file's info; a 404 here means the file, not the sandbox (checked just before)."""
        try:
            return await self._calls.call("file info", lambda: sandbox.fs.get_file_info(path))
        except ProviderError as exc:
            if status_of(exc.__cause__ or exc) == 404 or exc.details.get("status") == 404:
                raise FileNotFoundError(errno.ENOENT, "no such file", path) from None
            raise

    async def read(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Stream one file; ``FileNotFoundError`` / ``IsADirectoryError`` before the first chunk."""
        check_path(path)
        sandbox = await self._running(ref)
        info = await self._file_info(sandbox, path)
        if info.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not info.size:
            return  # the SDK's stream treats "no data" as an error; an empty file has none
        async for chunk in self._download(sandbox, ref, path):
            yield chunk

    async def _download(self, sandbox: Any, ref: str, path: str) -> AsyncIterator[bytes]:
        try:
            stream = await sandbox.fs.download_file_stream(path)
            async for chunk in stream:
                yield chunk
        except (ProviderError, FileNotFoundError):
            raise
        except Exception as exc:
            raise translate(exc, f"download of {path}", ref) from exc

    async def write(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Create parent directories, then stream ``data`` into ``path``."""
        check_path(path)
        sandbox = await self._running(ref)
        parent = posixpath.dirname(path.rstrip("/")) or "/"
        await self._calls.call("create folder", lambda: sandbox.fs.create_folder(parent, "755"), ref=ref)
        await self._upload(sandbox, ref, path, data)

    async def _upload(self, sandbox: Any, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        try:
            await sandbox.fs.upload_file_stream(data, path)
        except (DaytonaError, OSError, ValueError) as exc:
            raise translate(exc, f"upload of {path}", ref) from exc
        except Exception as exc:  # httpx/aiohttp transport errors of the streaming body
            raise translate(exc, f"upload of {path}", ref) from exc

    async def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """``tar -c`` of ``path`` (entries relative to it) into a spool file, then stream that."""
        check_path(path)
        sandbox = await self._running(ref)
        spool = f"{STATE_DIR}/export-{secrets.token_hex(8)}.tar"
        script = (
            f"test -d {shlex.quote(path)} || {{ echo missing >&2; exit 44; }}; mkdir -p {STATE_DIR} && "
            f"tar -C {shlex.quote(path)} --numeric-owner -cf {spool} . ; rc=$?; "
            # GNU tar exits 1 when a file changed while read: the archive is still whole.
            '[ "$rc" -le 1 ] || exit "$rc"'
        )
        result = await self._run(ref, ["sh", "-c", script], timeout=TAR_TIMEOUT, max_output_bytes=4096)
        try:
            if result.exit_code == 44:
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            if result.exit_code != 0:
                detail = result.stderr.decode(errors="replace").strip()[-500:]
                raise ProviderError(f"tar of {path} failed in daytona sandbox {ref}: {detail}")
            async for chunk in self._download(sandbox, ref, spool):
                yield chunk
        finally:
            await asyncio.shield(self._remove(ref, spool))

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Stream the tar into a spool file, then ``tar -x`` it into ``path`` (created)."""
        check_path(path)
        sandbox = await self._running(ref)
        spool = f"{STATE_DIR}/import-{secrets.token_hex(8)}.tar"
        await self._calls.call("create folder", lambda: sandbox.fs.create_folder(STATE_DIR, "700"), ref=ref)
        try:
            await self._upload(sandbox, ref, spool, data)
            script = f"mkdir -p -- {shlex.quote(path)} && tar -C {shlex.quote(path)} -xpf {spool} --no-same-owner"
            result = await self._run(ref, ["sh", "-c", script], timeout=TAR_TIMEOUT, max_output_bytes=4096)
            if result.exit_code != 0:
                detail = result.stderr.decode(errors="replace").strip()[-500:]
                raise BadRequest(f"tar extraction into {path} failed: {detail}")
        finally:
            await asyncio.shield(self._remove(ref, spool))

    async def _remove(self, ref: str, spool: str) -> None:
        """Delete a spool file; a failure is logged, never masks the transfer's own outcome."""
        try:
            await self._run(ref, ["rm", "-f", "--", spool], timeout=30, max_output_bytes=1024)
        except Exception as exc:
            log.warning("daytona provider: could not remove spool file %s in %s: %s", spool, ref, exc)
