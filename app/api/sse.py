"""Server-sent events: the framing every streaming endpoint shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pydantic_core
from starlette.requests import Request

#: Headers of every SSE answer: no caching, no proxy buffering (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def parse_last_event_id(value: str | None) -> int:
    """The ``Last-Event-ID`` of an SSE reconnect (a log chunk's seq); 0 when absent or invalid."""
    if value and value.strip().isdigit():
        return int(value.strip())
    return 0


def sse_event(data: str, *, event: str | None = None, event_id: int | str | None = None) -> str:
    """One server-sent event; multi-line data becomes several ``data:`` lines."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return "\n".join(lines) + "\n\n"


def sse_json_frame(event: str, payload: Any, event_id: str | None = None) -> bytes:
    """One event whose data is ``payload`` as JSON (one line: JSON escapes newlines), as bytes.

    The hot path of streamed output: serialised straight to bytes, no text round trip.
    """
    head = f"id: {event_id}\nevent: {event}\ndata: " if event_id is not None else f"event: {event}\ndata: "
    return head.encode() + pydantic_core.to_json(payload) + b"\n\n"


#: Seconds of silence after which a comment line keeps proxies from closing the stream.
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keepalive\n\n"


async def _disconnected(request: Request) -> None:
    """Return once the client went away (the request body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(
    request: Request, items: AsyncGenerator[bytes, None], *, keepalive: float = KEEPALIVE_SECONDS
) -> AsyncIterator[bytes]:
    """``items``, ended (closed: whatever feeds it stops) as soon as the client disconnects.

    The server notices a gone client only when a write fails, which a quiet
    command may not do for a long time; so a watcher listens for the
    disconnect itself and cancels the pending read, which the stream's owner
    turns into a kill. Quiet spells get a keepalive comment.
    """
    watcher: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending, watcher}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield item
            elif watcher in done:
                return
            else:
                yield KEEPALIVE
    finally:
        for task in (pending, watcher):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (pending, watcher) if t is not None), return_exceptions=True)
        await items.aclose()
