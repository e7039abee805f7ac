"""Async subprocess plumbing: run with caps and a deadline, stream in, stream out.

Generic over what is spawned (the local provider spawns bwrap, the test fake
spawns host processes). Three shapes:

* ``run_process``: feed optional stdin, capture both streams up to a cap
  (reading on and discarding the rest so the child never blocks on a full
  pipe), kill the whole process group at the deadline.
* ``stream_output``: an async iterator over stdout in 64 KiB chunks.
* ``feed_input``: copy an async byte iterator into stdin.

Memory stays bounded by the chunk size and the caps whatever the data size.
Each child gets its own session (``start_new_session``) so one ``killpg``
ends it with everything it started; the kill-and-reap cleanup runs shielded
from cancellation, so a caller that gives up (or a consumer that stops
iterating) never leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from app.providers.base import TIMEOUT_EXIT_CODE, ExecResult

CHUNK_SIZE = 64 * 1024
#: A child's output pipes and what asyncio buffers from each before pausing: at
#: the default 64 KiB the writer and the reader ping-pong every 64 KiB, which on
#: two cores halves the throughput of a streamed command.
OUTPUT_PIPE_BYTES = 1 << 20
OUTPUT_READ_BYTES = 256 * 1024
#: How much stderr of an internal helper (cat, tar) is kept for error messages.
HELPER_STDERR_BYTES = 16 * 1024
#: After the main process exits, how long stragglers may hold its pipes open.
PIPE_DRAIN_SECONDS = 5.0

#: Check of an internal helper's outcome: raise, or return to accept it.
OutcomeCheck = Callable[[int, bytes], None]

# strerror texts printed by coreutils/tar/sh, most specific first.
_STDERR_ERRNO: tuple[tuple[str, int], ...] = (
    ("No such file or directory", errno.ENOENT),
    ("Permission denied", errno.EACCES),
    ("Operation not permitted", errno.EPERM),
    ("Read-only file system", errno.EROFS),
    ("Not a directory", errno.ENOTDIR),
    ("Is a directory", errno.EISDIR),
    ("File exists", errno.EEXIST),
    ("No space left on device", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
)

#: Helper scripts report a precondition failure as ``ERRNO_EXIT_BASE + errno``.
ERRNO_EXIT_BASE = 100


def exit_status(returncode: int) -> int:
    """Shell convention: a child killed by signal N reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def errno_from_stderr(stderr: bytes) -> int | None:
    """The errno a helper's error message names, if any."""
    text = stderr.decode(errors="replace")
    return next((code for needle, code in _STDERR_ERRNO if needle in text), None)


def os_error(returncode: int, stderr: bytes, path: str) -> OSError:
    """The most specific ``OSError`` for a failed helper (a subclass via errno)."""
    code = returncode - ERRNO_EXIT_BASE if returncode > ERRNO_EXIT_BASE else None
    code = code or errno_from_stderr(stderr) or errno.EIO
    detail = stderr.decode(errors="replace").strip()[-500:]
    # OSError(errno, ...) instantiates FileNotFoundError, IsADirectoryError, ...
    return OSError(code, f"{os.strerror(code)}{': ' + detail if detail else ''}", path)


def close_transport(proc: asyncio.subprocess.Process) -> None:
    """Close ``proc``'s transport now, on its own loop.

    ``Process.wait()`` does not close it; left to the garbage collector it
    warns "unclosed transport" and may close itself after its loop has ended.
    """
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _set_pipe_size(pipe: Any, size: int) -> None:
    # Beyond /proc/sys/fs/pipe-max-size (or a user's pipe quota) the default size stays;
    # a child that exited already has had its pipe closed (ValueError): nothing to grow.
    with contextlib.suppress(OSError, ValueError):
        if pipe is not None:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)


def _grow_pipe(writer: asyncio.StreamWriter, size: int) -> None:
    """Let ``size`` bytes wait in a child's stdin pipe and as many in its transport."""
    _set_pipe_size(writer.transport.get_extra_info("pipe"), size)
    writer.transport.set_write_buffer_limits(high=size)


def grow_output_pipes(proc: asyncio.subprocess.Process, size: int = OUTPUT_PIPE_BYTES) -> None:
    """Let ``size`` bytes of ``proc``'s stdout and stderr wait in their pipes."""
    transport = getattr(proc, "_transport", None)
    for fd in (1, 2):
        pipe = transport.get_pipe_transport(fd) if transport is not None else None
        if pipe is not None:
            _set_pipe_size(pipe.get_extra_info("pipe"), size)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``; gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    cwd: str | None,
    pass_fds: Sequence[int],
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        limit=OUTPUT_READ_BYTES,
    )


async def _read_capped(stream: asyncio.StreamReader | None, cap: int) -> tuple[bytes, bool]:
    """Read to EOF keeping at most ``cap`` bytes; report whether any were dropped."""
    if stream is None:
        return b"", False
    kept = bytearray()
    dropped = False
    while chunk := await stream.read(CHUNK_SIZE):
        room = cap - len(kept)
        if room > 0:
            kept += chunk[:room]
        dropped = dropped or len(chunk) > room
    return bytes(kept), dropped


async def _feed_bytes(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    if writer is None:
        return
    # The child may exit without reading its stdin: its exit status says why.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for start in range(0, len(data), CHUNK_SIZE):
            writer.write(data[start : start + CHUNK_SIZE])
            await writer.drain()
        writer.close()
        await writer.wait_closed()


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(CHUNK_SIZE):
        pass


async def _reap(proc: asyncio.subprocess.Process, tasks: Sequence[asyncio.Future[Any]], track: set[int] | None) -> None:
    """Kill (if still running) and reap ``proc``; cancel helpers that still run; untrack it."""
    if proc.returncode is None:
        kill_group(proc.pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Process.wait() (3.11) also waits for the pipes to close, and a pipe whose
    # reader gave up is paused with data pending: drain what is left.
    drains = [asyncio.ensure_future(_discard(s)) for s in (proc.stdout, proc.stderr) if s is not None]
    waiter = asyncio.ensure_future(proc.wait())
    try:
        done, _ = await asyncio.wait([waiter], timeout=PIPE_DRAIN_SECONDS)
        if not done:
            # A process outside the group still holds a pipe: stop listening to it.
            close_transport(proc)
            await waiter
    finally:
        for drain in drains:
            drain.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
        close_transport(proc)
        if track is not None:
            track.discard(proc.pid)


async def _cleanup(
    proc: asyncio.subprocess.Process, tasks: Sequence[asyncio.Future[Any]], track: set[int] | None
) -> None:
    """Run ``_reap`` to completion even if the caller is being cancelled.

    On cancellation the shielded reaper keeps running on its own and the
    ``CancelledError`` propagates to the caller as it should. The reaper, not
    the caller, removes the pid from ``track``: only once it is really gone
    (a cancelled caller never gets to, and a stale pid could be reused).
    """
    await asyncio.shield(_reap(proc, tasks, track))


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    stdin: bytes | None = None,
    max_output_bytes: int = 1 << 20,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    track: set[int] | None = None,
    kill_group_on_exit: bool = False,
) -> ExecResult:
    """Run ``argv`` to completion or ``timeout``; never raises for a failing command.

    ``track`` receives the child's pid (its process group) while it runs, so
    a ``stop`` can kill it. ``kill_group_on_exit`` ends background children
    left in the group once the main process exits (host processes have no
    pid namespace to do that for them).
    """
    started = time.monotonic()
    proc = await _spawn(
        argv,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        cwd=cwd,
        pass_fds=pass_fds,
    )
    if track is not None:
        track.add(proc.pid)
    out_task = asyncio.ensure_future(_read_capped(proc.stdout, max_output_bytes))
    err_task = asyncio.ensure_future(_read_capped(proc.stderr, max_output_bytes))
    feed_task = asyncio.ensure_future(_feed_bytes(proc.stdin, stdin or b""))
    tasks: list[asyncio.Future[Any]] = [out_task, err_task, feed_task]
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            kill_group(proc.pid)
            await proc.wait()
        if kill_group_on_exit:
            kill_group(proc.pid)
        # Pipes close when the last holder exits; bound the wait for stragglers.
        done, _ = await asyncio.wait([out_task, err_task], timeout=PIPE_DRAIN_SECONDS)
        stdout, out_cut = out_task.result() if out_task in done else (b"", False)
        stderr, err_cut = err_task.result() if err_task in done else (b"", False)
    finally:
        await _cleanup(proc, tasks, track)
    returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    return ExecResult(
        exit_code=TIMEOUT_EXIT_CODE if timed_out else exit_status(returncode),
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        truncated=out_cut or err_cut,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


async def stream_output(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    check: OutcomeCheck,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    track: set[int] | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield the child's stdout in chunks, then ``check(exit_status, stderr)``.

    A helper that fails before writing anything (missing file) therefore
    raises on the first ``__anext__``; one that fails midway raises after the
    bytes it produced.
    """
    proc = await _spawn(
        argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, cwd=cwd, pass_fds=pass_fds
    )
    if track is not None:
        track.add(proc.pid)
    # A tar export runs ahead while the snapshot parses what it already wrote.
    grow_output_pipes(proc)
    err_task = asyncio.ensure_future(_read_capped(proc.stderr, HELPER_STDERR_BYTES))
    try:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(OUTPUT_READ_BYTES):
            yield chunk
        returncode = await proc.wait()
        stderr, _ = await err_task
        check(exit_status(returncode), stderr)
    finally:
        await _cleanup(proc, [err_task], track)


async def feed_input(
    argv: Sequence[str],
    data: AsyncIterator[bytes],
    *,
    env: Mapping[str, str],
    check: OutcomeCheck,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    track: set[int] | None = None,
    buffer_bytes: int | None = None,
) -> None:
    """Copy ``data`` into the child's stdin, then ``check(exit_status, stderr)``.

    If ``data`` raises, the child is killed and the error propagates.
    ``buffer_bytes`` lets the producer run that far ahead of the child (a pipe of
    that size, best effort, plus as much in the transport) instead of 64 KiB, so
    both keep working when one of them is bursty.
    """
    proc = await _spawn(
        argv, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, cwd=cwd, pass_fds=pass_fds
    )
    if track is not None:
        track.add(proc.pid)
    err_task = asyncio.ensure_future(_read_capped(proc.stderr, HELPER_STDERR_BYTES))
    try:
        writer = proc.stdin
        assert writer is not None
        if buffer_bytes is not None:
            _grow_pipe(writer, buffer_bytes)
        # The child may stop reading early (its precondition failed): stop copying then.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            async for chunk in data:
                if proc.returncode is not None:
                    break
                writer.write(chunk)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        returncode = await proc.wait()
        stderr, _ = await err_task
        check(exit_status(returncode), stderr)
    finally:
        await _cleanup(proc, [err_task], track)
