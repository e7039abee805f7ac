"""A subprocess whose output is yielded as it is produced (``Provider.exec_stream``).

The streamed sibling of ``io.run_process``: the same session per child, the
same group kill at the deadline and the same shielded kill-and-reap when the
consumer stops early or is cancelled, so a client that goes away never leaves
the command running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from app.providers.base import ExecEvent, StreamName
from app.providers.local.io import OUTPUT_READ_BYTES, _cleanup, _spawn, exit_status, grow_output_pipes, kill_group
from app.providers.streaming import OutputPump


async def _copy_in(writer: asyncio.StreamWriter | None, data: AsyncIterator[bytes] | None) -> None:
    if writer is None:
        return
    # The child may exit without reading its stdin: its exit status says why.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data is not None:
            async for chunk in data:
                writer.write(chunk)
                await writer.drain()
        writer.close()
        await writer.wait_closed()


async def _pump(pump: OutputPump, name: StreamName, stream: asyncio.StreamReader | None) -> None:
    if stream is None:
        return
    while chunk := await stream.read(OUTPUT_READ_BYTES):
        await pump.put(name, chunk)


async def stream_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    stdin: AsyncIterator[bytes] | None = None,
    max_output_bytes: int = 1 << 20,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    track: set[int] | None = None,
    kill_group_on_exit: bool = False,
) -> AsyncGenerator[ExecEvent, None]:
    """Run ``argv``, yielding ``OutputChunk``s then its ``ExecResult``; see ``io.run_process``."""
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
    grow_output_pipes(proc)
    pump = OutputPump(max_output_bytes)
    feeder = asyncio.ensure_future(_copy_in(proc.stdin, stdin))
    tasks: list[asyncio.Future[Any]] = [feeder]

    async def read_both() -> None:
        await asyncio.gather(_pump(pump, "stdout", proc.stdout), _pump(pump, "stderr", proc.stderr))

    async def ended() -> None:
        # Output ends when the last holder of the pipes exits; the command's own
        # exit ends a group it left children in (host processes: no pid namespace).
        waiter = asyncio.ensure_future(proc.wait())
        reader = asyncio.ensure_future(read_both())
        tasks.extend((waiter, reader))
        await waiter
        if kill_group_on_exit:
            kill_group(proc.pid)
        await reader

    async def kill() -> None:
        kill_group(proc.pid)

    try:
        async for chunk in pump.chunks(ended(), timeout=timeout, kill=kill):
            yield chunk
        if proc.returncode is None:
            # Stragglers held the pipes past the drain: end the command's group now.
            kill_group(proc.pid)
            await proc.wait()
        returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        yield pump.result(exit_status(returncode))
    finally:
        await _cleanup(proc, tasks, track)
