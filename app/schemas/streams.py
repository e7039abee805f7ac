"""Events of streamed output (``exec`` with SSE, process logs): one shape per event."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import Field

from app.providers.base import ExecResult
from app.schemas.common import StrictModel

#: Longest UTF-8 sequence a chunk can end inside of (kept for the next chunk).
_MAX_PARTIAL = 3


class OutputEvent(StrictModel):
    """``stdout`` / ``stderr`` events: one chunk, as text when it is UTF-8, else base64."""

    data: str
    encoding: Literal["utf-8", "base64"] = "utf-8"

    def raw(self) -> bytes:
        """The chunk's bytes."""
        return base64.b64decode(self.data) if self.encoding == "base64" else self.data.encode()


class ExitView(StrictModel):
    """The ``exit`` event: how the command ended (a non-zero exit or a timeout is a result)."""

    exit_code: int
    timed_out: bool
    truncated: bool = Field(description="output past the cap was dropped")
    duration_ms: int

    @classmethod
    def of(cls, result: ExecResult) -> ExitView:
        return cls(
            exit_code=result.exit_code,
            timed_out=result.timed_out,
            truncated=result.truncated,
            duration_ms=result.duration_ms,
        )


class ChunkEncoder:
    """Turns one stream's chunks into ``OutputEvent``s without splitting a UTF-8 character.

    A chunk that ends inside a multi-byte character keeps those bytes for the next
    one, so text stays text across chunk boundaries; anything else invalid goes out
    as base64, whole.
    """

    def __init__(self) -> None:
        self._pending = b""

    @property
    def held(self) -> int:
        """Bytes kept back (the start of a character the next chunk completes)."""
        return len(self._pending)

    def encode(self, data: bytes) -> OutputEvent | None:
        """The event for ``data`` (with bytes held from before), or None while all is held."""
        data, self._pending = self._pending + data, b""
        try:
            return OutputEvent(data=data.decode())
        except UnicodeDecodeError as exc:
            cut = exc.start
            if exc.reason == "unexpected end of data" and len(data) - cut <= _MAX_PARTIAL:
                self._pending = data[cut:]
                return OutputEvent(data=data[:cut].decode()) if cut else None
            return OutputEvent(data=base64.b64encode(data).decode(), encoding="base64")

    def flush(self) -> OutputEvent | None:
        """What is still held at the end of the stream (an incomplete character: base64)."""
        data, self._pending = self._pending, b""
        return OutputEvent(data=base64.b64encode(data).decode(), encoding="base64") if data else None
