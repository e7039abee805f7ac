"""Shared machinery of ``Provider.exec_stream``: caps, a deadline, ordered hand-over.

Every provider reads a command's output in its own way (pipes, a multiplexed
attach stream, websocket channels, an SDK's iterators). ``OutputPump`` is what
they share: readers ``put`` chunks, per-stream caps drop and flag the excess
(readers keep reading, so the command never stalls on a full pipe), and one
consumer iterates ``chunks`` under the deadline, which calls the provider's
``kill`` once and then drains for a bounded time. The queue is small, so a
slow consumer slows the readers instead of filling memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace

from app.providers.base import TIMEOUT_EXIT_CODE, ExecEvent, ExecResult, OutputChunk, StreamName

#: Chunks waiting for the consumer before readers block.
QUEUE_CHUNKS = 16
#: Seconds output may keep arriving after the deadline kill.
KILL_DRAIN_SECONDS = 5.0
#: Largest chunk made by joining chunks that queued up while the consumer was busy.
COALESCE_BYTES = 1 << 20


class OutputPump:
    """Chunks from reader tasks to one consumer, capped per stream, under a deadline."""

    def __init__(self, max_output_bytes: int) -> None:
        self._queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self._room: dict[StreamName, int] = {"stdout": max_output_bytes, "stderr": max_output_bytes}
        self._error: BaseException | None = None
        #: A chunk taken from the queue while joining, that belongs to the other stream.
        self._held: OutputChunk | None = None
        self.started = time.monotonic()
        self.truncated = False
        self.timed_out = False

    async def put(self, stream: StreamName, data: bytes) -> None:
        """Hand ``data`` on (what fits under the cap); waits while the consumer is behind."""
        room = self._room[stream]
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._room[stream] = room - len(data)
            await self._queue.put(OutputChunk(stream, data))

    async def _read(self, reader: Awaitable[None]) -> None:
        try:
            await reader
        except Exception as exc:  # re-raised to the consumer, after the chunks before it
            self._error = exc
        await self._queue.put(None)

    async def chunks(
        self, reader: Awaitable[None], *, timeout: float, kill: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[OutputChunk]:
        """Yield what ``reader`` puts until it returns; at ``timeout`` ``kill`` and drain briefly.

        ``reader`` must return once the command's output ended. Its error, if any, is
        raised after the chunks it put. Stopping early cancels it (the caller kills).
        """
        task = asyncio.ensure_future(self._read(reader))
        deadline = self.started + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self.timed_out:
                        return  # stragglers kept the output open past the drain
                    self.timed_out = True
                    await kill()
                    deadline = time.monotonic() + KILL_DRAIN_SECONDS
                    continue
                if self._held is not None:
                    item: OutputChunk | None = self._held
                    self._held = None
                elif not self._queue.empty():
                    item = self._queue.get_nowait()  # the common case under load: no timer needed
                else:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        continue
                if item is None:
                    break
                yield self._joined(item)
            if self._error is not None:
                raise self._error
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _joined(self, first: OutputChunk) -> OutputChunk:
        """``first`` and the chunks of its stream queued right behind it, as one (fewer, larger events
        when the consumer is the slower side; a lone chunk goes out as it is)."""
        parts = [first.data]
        size = len(first.data)
        while size < COALESCE_BYTES and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                self._queue.put_nowait(None)  # the end stays last (there is room: it was just taken)
                break
            if item.stream != first.stream:
                self._held = item
                break
            parts.append(item.data)
            size += len(item.data)
        return first if len(parts) == 1 else OutputChunk(first.stream, b"".join(parts))

    def result(self, exit_code: int) -> ExecResult:
        """The final event: ``exit_code`` (124 after a deadline kill), flags and duration."""
        return ExecResult(
            exit_code=TIMEOUT_EXIT_CODE if self.timed_out else exit_code,
            stdout=b"",
            stderr=b"",
            timed_out=self.timed_out,
            truncated=self.truncated,
            duration_ms=int((time.monotonic() - self.started) * 1000),
        )


async def collect(events: AsyncGenerator[ExecEvent, None]) -> ExecResult:
    """The ``exec`` result of a streamed command: its chunks joined per stream."""
    out, err = bytearray(), bytearray()
    async for event in events:
        if isinstance(event, OutputChunk):
            (out if event.stream == "stdout" else err).extend(event.data)
        else:
            return replace(event, stdout=bytes(out), stderr=bytes(err))
    raise RuntimeError("exec_stream ended without its result")


async def joined(data: AsyncIterator[bytes] | None) -> bytes | None:
    """A stdin stream read to its end (for a backend that takes stdin only whole)."""
    if data is None:
        return None
    return b"".join([chunk async for chunk in data])


async def replay(result: ExecResult) -> AsyncGenerator[ExecEvent, None]:
    """A finished command as ``exec_stream`` events (``Capabilities.live_output`` False)."""
    if result.stdout:
        yield OutputChunk("stdout", result.stdout)
    if result.stderr:
        yield OutputChunk("stderr", result.stderr)
    yield replace(result, stdout=b"", stderr=b"")


async def once(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk stream (``exec``'s stdin for ``exec_stream``)."""
    yield data
