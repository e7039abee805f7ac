"""Files and tar streams through ``exec``, with bounded memory.

The SDK's filesystem helpers read and write whole files in memory, so files
and archives go through ``cat`` and ``tar`` instead: output is consumed as
the SDK yields it, input is written to stdin one drained chunk at a time.

A reading command first checks its path and prints one marker byte (``K``)
before the payload; a stream that ends without it carries an exit code that
says why (2: missing, 20: not a directory, 21: a directory, 13: denied), so
errors surface as the built-in ``OSError`` subclasses before any data.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from typing import Any

from app.errors import SandboxControlError
from app.providers.modal.errors import SdkCaller
from app.providers.modal.exec import MAX_CHUNK, StreamBuffer, as_bytes, feed_stdin

log = logging.getLogger(__name__)

#: Whole-second exec timeout of one file or tar transfer (Modal's backstop).
TRANSFER_TIMEOUT = 3600
_MARK = b"K"
_CODES: dict[int, tuple[type[OSError], int]] = {
    2: (FileNotFoundError, errno.ENOENT),
    13: (PermissionError, errno.EACCES),
    20: (NotADirectoryError, errno.ENOTDIR),
    21: (IsADirectoryError, errno.EISDIR),
}

_READ_FILE = r"""[ -d "$1" ] && exit 21; [ -e "$1" ] || exit 2; [ -r "$1" ] || exit 13
printf K; exec cat -- "$1" """
_EXPORT_TAR = r"""[ -e "$1" ] || exit 2; [ -d "$1" ] || exit 20; [ -r "$1" ] && [ -x "$1" ] || exit 13
printf K; exec tar -C "$1" -cf - ."""
_WRITE_FILE = r"""[ -d "$1" ] && exit 21; mkdir -p -- "$(dirname -- "$1")" && exec cat >"$1" """
_IMPORT_TAR = r"""mkdir -p -- "$1" && exec tar -C "$1" -xpf -"""


def _error(code: int, path: str, stderr: bytes) -> OSError:
    kind, number = _CODES.get(code, (OSError, errno.EIO))
    message = stderr.decode(errors="replace").strip()
    if kind is OSError and "denied" in message.lower():
        kind, number = PermissionError, errno.EACCES
    return kind(number, message or f"{kind.__name__} (exit {code})", path)


async def _start(caller: SdkCaller, sandbox: Any, ref: str, what: str, script: str, path: str) -> Any:
    return await caller.call(
        what,
        lambda: sandbox.exec.aio("sh", "-c", script, "sh", path, timeout=TRANSFER_TIMEOUT, text=False),
        ref=ref,
        retry=False,
    )


async def stream_out(caller: SdkCaller, sandbox: Any, ref: str, what: str, path: str) -> AsyncIterator[bytes]:
    """Yield the payload of a marker-prefixed read (``read_file`` or ``export_tar``) as it arrives."""
    script = _READ_FILE if what == "read_file" else _EXPORT_TAR
    process = await _start(caller, sandbox, ref, what, script, path)
    marked = False
    try:
        await feed_stdin(process, None)  # nothing to send; closed so no command waits on it
        async for raw in process.stdout:
            chunk = as_bytes(raw)
            if not marked:
                if not chunk:
                    continue
                if chunk[:1] != _MARK:
                    raise OSError(errno.EIO, f"unexpected output from {what}", path)
                marked, chunk = True, chunk[1:]
            for start in range(0, len(chunk), MAX_CHUNK):
                yield chunk[start : start + MAX_CHUNK]
        code = await process.wait.aio()
    except (SandboxControlError, OSError):
        raise
    except Exception as exc:
        caller.fail(exc, what, ref=ref)
    # GNU tar exits 1 when a file changed while it was read: the archive is
    # still whole, so a live workspace's snapshot is not refused for it.
    if code != 0 and not (marked and what == "export_tar" and code == 1):
        errors = StreamBuffer(4096)
        await errors.drain(process.stderr)
        raise _error(code if not marked else -1, path, bytes(errors.data))


async def stream_in(
    caller: SdkCaller, sandbox: Any, ref: str, what: str, path: str, data: AsyncIterator[bytes]
) -> None:
    """Feed ``data`` to ``write_file``'s ``cat`` or ``import_tar``'s ``tar -x``; raise on failure."""
    script = _WRITE_FILE if what == "write_file" else _IMPORT_TAR
    process = await _start(caller, sandbox, ref, what, script, path)
    try:
        await feed_stdin(process, data)
        code = await process.wait.aio()
        if code != 0:
            errors = StreamBuffer(4096)
            await errors.drain(process.stderr)
            raise _error(code, path, bytes(errors.data))
    except (SandboxControlError, OSError):
        raise
    except Exception as exc:
        caller.fail(exc, what, ref=ref)
