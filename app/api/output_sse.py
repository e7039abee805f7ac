"""A streamed command as server-sent events (``POST /v1/sandboxes/{id}/exec`` with SSE).

Events, in order: ``stdout`` / ``stderr`` (``OutputEvent``: a chunk as text, or
base64 when it is not UTF-8), then one ``exit`` (``ExitView``). Trouble after
the answer started (the sandbox stopped meanwhile) is one ``error`` event with
the usual error envelope instead of ``exit``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

from app.api.errors import error_payload
from app.api.sse import sse_event, sse_json_frame
from app.errors import SandboxControlError
from app.providers.base import ExecEvent, OutputChunk, StreamName
from app.schemas.streams import ChunkEncoder, ExitView, OutputEvent


def _event(stream: StreamName, output: OutputEvent | None) -> list[bytes]:
    return [sse_json_frame(stream, output.model_dump())] if output is not None else []


async def exec_sse(events: AsyncGenerator[ExecEvent, None]) -> AsyncGenerator[bytes, None]:
    """``events`` as SSE frames; closing this closes ``events`` (which kills the command)."""
    encoders: dict[StreamName, ChunkEncoder] = {"stdout": ChunkEncoder(), "stderr": ChunkEncoder()}
    try:
        async for event in events:
            if isinstance(event, OutputChunk):
                for frame in _event(event.stream, encoders[event.stream].encode(event.data)):
                    yield frame
                continue
            for stream, encoder in encoders.items():
                for frame in _event(stream, encoder.flush()):
                    yield frame
            yield sse_event(ExitView.of(event).model_dump_json(), event="exit").encode()
    except SandboxControlError as exc:
        yield sse_event(json.dumps(error_payload(exc)), event="error").encode()
    finally:
        await events.aclose()
