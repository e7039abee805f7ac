"""The length-prefixed framing of a streamed command (``application/vnd.sandbox-control.frames``).

Each frame is an 8-byte header, then its payload:

    byte 0: kind (1 stdout, 2 stderr, 3 exit, 4 error); bytes 1-3: zero;
    bytes 4-7: the payload's length, unsigned big-endian

which is how Docker's attach stream frames stdout and stderr. Standard library
only: the service writes it and both clients read it.
"""

from __future__ import annotations

import enum
import struct

FRAMES_MEDIA_TYPE = "application/vnd.sandbox-control.frames"
FRAME_HEADER = struct.Struct(">BxxxI")


class FrameKind(enum.IntEnum):
    STDOUT = 1
    STDERR = 2
    EXIT = 3
    ERROR = 4


def frame(kind: int, payload: bytes) -> bytes:
    """One frame of ``kind`` carrying ``payload``."""
    return FRAME_HEADER.pack(kind, len(payload)) + payload


class FrameError(ValueError):
    """The bytes are not a whole number of frames."""


class FrameDecoder:
    """Frames from bytes as they arrive, however the transport cut them.

    A payload is copied once at most (joined from the pieces it arrived in); one
    that arrived in a single piece is that piece.
    """

    def __init__(self) -> None:
        self._head = b""
        self._kind = 0
        #: Payload bytes still missing from the current frame; None while reading a header.
        self._missing: int | None = None
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """The (kind, payload) frames that ``chunk`` completes."""
        frames: list[tuple[int, bytes]] = []
        at, end = 0, len(chunk)
        while True:
            if self._missing is None:
                if at >= end:
                    break
                take = FRAME_HEADER.size - len(self._head)
                self._head += chunk[at : at + take]
                at += take
                if len(self._head) < FRAME_HEADER.size:
                    break
                self._kind, self._missing = FRAME_HEADER.unpack(self._head)
                self._head = b""
            if self._missing:
                if at >= end:
                    break
                piece = chunk if at == 0 and self._missing >= end else chunk[at : at + self._missing]
                self._parts.append(piece)
                at += len(piece)
                self._missing -= len(piece)
            if self._missing == 0:
                parts, self._parts = self._parts, []
                frames.append((self._kind, parts[0] if len(parts) == 1 else b"".join(parts)))
                self._missing = None
        return frames

    def close(self) -> None:
        """Raise ``FrameError`` when the bytes ended inside a frame."""
        if self._head or self._missing is not None:
            raise FrameError("the stream ended inside a frame")
