"""Server-sent events: the framing every streaming endpoint shares."""

from __future__ import annotations

#: Headers of every SSE answer: no caching, no proxy buffering (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def parse_last_event_id(value: str | None) -> int:
    """The ``Last-Event-ID`` of an SSE reconnect (a log chunk's seq); 0 when absent or invalid."""
    if value and value.strip().isdigit():
        return int(value.strip())
    return 0


def sse_event(data: str, *, event: str | None = None, event_id: int | None = None) -> str:
    """One server-sent event; multi-line data becomes several ``data:`` lines."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return "\n".join(lines) + "\n\n"
