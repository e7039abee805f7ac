"""Files and tar streams through ``pods/exec``, streamed as ``kubectl cp`` does.

``cat`` and ``tar`` run in the pod; their output is yielded message by
message as the API server sends it, and input is written to their stdin
one chunk at a time (the websocket waits while the connection is congested),
so memory stays a chunk deep whatever the size.

A reading command first checks its path and prints one marker byte (``K``)
before the payload; a stream that ends without it carries an exit code that
says why (2: missing, 20: not a directory, 21: a directory, 13: denied), so
errors surface as the built-in ``OSError`` subclasses before any data.
Stopping a read early closes the connection; the command then dies of
SIGPIPE on its next write.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from app.errors import BadRequest
from app.providers.exec_wrapper import CappedBuffer
from app.providers.kubernetes.channel import STDOUT
from app.providers.kubernetes.exec import ExecChannel

_MARK = b"K"
_STDERR_BYTES = 4096
#: Bytes of the caller's stream gathered into one stdin message.
_INPUT_BYTES = 256 * 1024
_CODES: dict[int, tuple[type[OSError], int]] = {
    2: (FileNotFoundError, errno.ENOENT),
    13: (PermissionError, errno.EACCES),
    20: (NotADirectoryError, errno.ENOTDIR),
    21: (IsADirectoryError, errno.EISDIR),
}

READ_FILE = r"""[ -d "$1" ] && exit 21; [ -e "$1" ] || exit 2; [ -r "$1" ] || exit 13
printf K; exec cat -- "$1" """
EXPORT_TAR = r"""[ -e "$1" ] || exit 2; [ -d "$1" ] || exit 20; [ -r "$1" ] && [ -x "$1" ] || exit 13
printf K; exec tar -C "$1" -cf - ."""
WRITE_FILE = r"""[ -d "$1" ] && exit 21; mkdir -p -- "$(dirname -- "$1")" && exec cat >"$1" """
IMPORT_TAR = r"""[ -e "$1" ] && [ ! -d "$1" ] && exit 20; mkdir -p -- "$1" && exec tar -C "$1" -xpf -"""


class OpenCommand(Protocol):
    """Starts one command in the sandbox: ``PodExecutor.open`` bound to one pod."""

    def __call__(self, argv: list[str], *, stdin: bool) -> AbstractAsyncContextManager[ExecChannel]: ...


def check_path(path: str) -> str:
    """An absolute sandbox path, or ``BadRequest``."""
    if not path.startswith("/") or "\0" in path:
        raise BadRequest(f"path must be absolute: {path!r}", field="path")
    return path


def _error(code: int, path: str, stderr: bytes) -> OSError:
    kind, number = _CODES.get(code, (OSError, errno.EIO))
    message = stderr.decode(errors="replace").strip()[-500:]
    if kind is OSError and "denied" in message.lower():
        kind, number = PermissionError, errno.EACCES
    elif kind is OSError and "No space left" in message:
        number = errno.ENOSPC
    return kind(number, message or f"{kind.__name__} (exit {code})", path)


async def stream_out(open_command: OpenCommand, script: str, path: str, *, tar: bool) -> AsyncIterator[bytes]:
    """Yield the payload of a marker-prefixed read (``READ_FILE`` or ``EXPORT_TAR``) as it arrives."""
    errors = CappedBuffer(_STDERR_BYTES)
    marked = False
    async with open_command(["sh", "-c", script, "sh", check_path(path)], stdin=False) as channel:
        while (item := await channel.receive()) is not None:
            stream, chunk = item
            if stream != STDOUT:
                errors.add(chunk)
                continue
            if not marked:
                if chunk[:1] != _MARK:
                    raise OSError(errno.EIO, "unexpected output from the sandbox", path)
                marked, chunk = True, chunk[1:]
                if not chunk:
                    continue
            yield chunk
        code = channel.exit_code()
    # GNU tar exits 1 when a file changed while it was read: the archive is
    # still whole, so a live workspace's snapshot is not refused for it.
    if code != 0 and not (marked and tar and code == 1):
        raise _error(code if not marked else -1, path, bytes(errors.data))


async def stream_in(open_command: OpenCommand, script: str, path: str, data: AsyncIterator[bytes]) -> None:
    """Feed ``data`` to ``WRITE_FILE``'s ``cat`` or ``IMPORT_TAR``'s ``tar -x``; raise on failure.

    Output is read while the input is written, so a command that fails early
    (and stops reading) ends the transfer with its error instead of a stall.
    """
    errors = CappedBuffer(_STDERR_BYTES)
    async with open_command(["sh", "-c", script, "sh", check_path(path)], stdin=True) as channel:

        async def collect() -> None:
            while (item := await channel.receive()) is not None:
                errors.add(item[1])

        reader = asyncio.create_task(collect())
        try:
            await _feed(channel, data, reader)
            await reader
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        code = channel.exit_code()
    if code != 0:
        raise _error(code, path, bytes(errors.data))


async def _feed(channel: ExecChannel, data: AsyncIterator[bytes], reader: asyncio.Task[None]) -> None:
    """Write ``data`` in gathered chunks, then end stdin; stop early once the command has ended."""
    pending = bytearray()
    try:
        async for chunk in data:
            pending += chunk
            if len(pending) >= _INPUT_BYTES:
                await channel.send(bytes(pending))
                pending.clear()
            if reader.done():
                return
        if pending:
            await channel.send(bytes(pending))
        await channel.close_stdin()
    except ConnectionClosed:
        return  # the command ended and the server closed: its status says why
