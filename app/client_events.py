"""What a client reads from the service, with the standard library only.

Shared by the async client (``app.client``) and the CLI's fast path
(``app.cli_exec``), which must not pay for importing httpx and asyncio: the
error an answer carries, server-sent events decoded as bytes arrive, and the
events of a streamed command.
"""

from __future__ import annotations

import base64
import codecs
import json
from dataclasses import dataclass

from app.frames import FrameKind


class ApiError(Exception):
    """The service answered with an error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


def api_error(status: int, body: bytes) -> ApiError:
    """The error an answer with ``status`` ≥ 400 and ``body`` stands for."""
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None
    if isinstance(envelope, dict):
        return ApiError(status, str(envelope.get("code", "error")), str(envelope.get("error", "")))
    return ApiError(status, "http_error", body[:200].decode(errors="replace"))


#: One server-sent event: (event, data, last event id).
SseEvent = tuple[str, str, str | None]
#: The same with the data as the bytes that came (what a byte-exact encoding needs).
RawSseEvent = tuple[str, bytes, str | None]


class SseDecoder:
    """Server-sent events from bytes as they arrive, however the transport cut them.

    Lines end with LF or CRLF (what our server sends). Splitting bytes here
    rather than with httpx's ``aiter_lines``, which decodes and re-splits on
    every Unicode line break, is a third of a streamed command's throughput.
    """

    def __init__(self) -> None:
        #: The start of a line the next chunks continue, and its field name when known.
        self._pending: list[bytes] = []
        self._field: bytes | None = None
        self._event = "message"
        self._data: list[bytes] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes."""
        return [(event, data.decode(), event_id) for event, data, event_id in self.feed_raw(chunk)]

    def feed_raw(self, chunk: bytes) -> list[RawSseEvent]:
        """The events that ``chunk`` completes, their data left as bytes."""
        events: list[RawSseEvent] = []
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if self._pending:
                self._pending.append(chunk[start:end])
                line, field = b"".join(self._pending), self._field
                self._pending.clear()
            else:
                line, field = chunk[start:end], None
            event = self._line(line.removesuffix(b"\r"), field)
            if event is not None:
                events.append(event)
            start = end + 1
        if start < len(chunk):
            if not self._pending:
                # A data line can be a megabyte: its field name comes off its first piece,
                # so the join is the only copy of the rest.
                self._field, value_at = _field_name(chunk, start)
                start = value_at
            self._pending.append(chunk[start:])
        return events

    def _line(self, line: bytes, field: bytes | None) -> RawSseEvent | None:
        if field is None:
            if not line:
                done = (self._event, b"\n".join(self._data), self._id) if self._data else None
                self._event, self._data = "message", []
                return done
            field, value_at = _field_name(line, 0)
            if field is None:  # a line without a colon is a field with an empty value
                field, value_at = line, len(line)
            line = line[value_at:]
        if field == b"data":
            self._data.append(line)
        elif field == b"event":
            self._event = line.decode()
        elif field == b"id":
            self._id = line.decode()
        return None  # comments (keepalives: an empty field name) and unknown fields


def _field_name(chunk: bytes, start: int) -> tuple[bytes | None, int]:
    """The field name of the line starting at ``start`` and where its value starts; (None, start)
    when ``chunk`` ends before that is certain (before the colon, or right after it)."""
    colon = chunk.find(b":", start)
    if colon == -1 or colon + 1 == len(chunk):
        return None, start
    return chunk[start:colon], colon + 2 if chunk[colon + 1] == 0x20 else colon + 1


@dataclass(frozen=True)
class Output:
    """A chunk of a command's ``stdout`` or ``stderr``."""

    stream: str
    data: bytes


@dataclass(frozen=True)
class Exit:
    """How a streamed command ended."""

    exit_code: int
    timed_out: bool
    truncated: bool
    duration_ms: int


ExecStreamEvent = Output | Exit

#: ``?encoding=`` of a streamed exec whose chunks are bytes with only backslash, LF and CR
#: escaped: undone in one C pass (``codecs.escape_decode`` reads exactly those escapes),
#: where ``json.loads`` of text with an escape on every line was a third of a client's time.
ESCAPED = "escaped"


def exec_frame_event(kind: int, payload: bytes) -> ExecStreamEvent | None:
    """One frame of a streamed command (``app.frames``); ``error`` raises; unknown kinds are None."""
    if kind == FrameKind.STDOUT:
        return Output("stdout", payload)
    if kind == FrameKind.STDERR:
        return Output("stderr", payload)
    if kind == FrameKind.EXIT:
        return exec_stream_event("exit", payload)
    if kind == FrameKind.ERROR:
        return exec_stream_event("error", payload)
    return None


def exec_stream_event(event: str, data: str | bytes, encoding: str = "json") -> ExecStreamEvent | None:
    """One SSE event of a streamed command; ``error`` raises ``ApiError``; unknown kinds are None.

    ``encoding`` is the one the client asked for (``ESCAPED`` takes the data as bytes).
    """
    if event in ("stdout", "stderr"):
        if encoding == ESCAPED:
            raw = codecs.escape_decode(data if isinstance(data, bytes) else data.encode())[0]
            return Output(event, raw)
        chunk = json.loads(data)
        raw = base64.b64decode(chunk["data"]) if chunk.get("encoding") == "base64" else chunk["data"].encode()
        return Output(event, raw)
    if event == "exit":
        body = json.loads(data)
        return Exit(int(body["exit_code"]), bool(body["timed_out"]), bool(body["truncated"]), int(body["duration_ms"]))
    if event == "error":
        body = json.loads(data)
        raise ApiError(200, str(body.get("code", "error")), str(body.get("error", "")))
    return None
