"""Multipart upload parts for ``S3BlobStore``: buffered one at a time, never joined.

A part is the list of chunks the producer yielded, exposed to botocore as a seekable
file (``PartBody``) so the bytes are never copied into one big buffer: joining would
double each part in memory.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import AsyncIterator
from typing import Any


class PartBody(io.RawIOBase):
    """A seekable read-only view over the chunks of one part, without joining them.

    Joining would double the part in memory; botocore only needs read/seek/tell.
    """

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._starts: list[int] = []
        offset = 0
        for chunk in chunks:
            self._starts.append(offset)
            offset += len(chunk)
        self.size = offset
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._pos < self.size:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            chunk = self._chunks[index]
            inner = self._pos - self._starts[index]
            take = min(len(view) - filled, len(chunk) - inner)
            view[filled : filled + take] = chunk[inner : inner + take]
            filled += take
            self._pos += take
        return filled


async def fill_part(source: AsyncIterator[bytes], target: int) -> tuple[PartBody, bool]:
    """Pull chunks until ``target`` bytes are buffered; also report end of stream."""
    chunks: list[bytes] = []
    size = 0
    empty = 0
    while size < target:  # bounded by target and by the count of empty chunks
        try:
            chunk = await anext(source)
        except StopAsyncIteration:
            return PartBody(chunks), True
        if not chunk:
            empty += 1
            if empty > 1_000_000:
                raise ValueError("upload source keeps yielding empty chunks")
        else:
            # Copy views and bytearrays: the producer may reuse its buffer.
            chunks.append(chunk if type(chunk) is bytes else bytes(chunk))
            size += len(chunk)
    return PartBody(chunks), False
