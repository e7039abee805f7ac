"""The client's SSE line splitter: lines cut anywhere by the transport come out whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.client import sse_lines


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _lines(*parts: bytes) -> list[bytes]:
    async def run() -> list[bytes]:
        return [line async for line in sse_lines(_chunks(*parts))]

    return asyncio.run(run())


@pytest.mark.parametrize("cut", range(1, 30))
def test_lines_split_anywhere_come_out_whole(cut: int) -> None:
    stream = b'event: stdout\r\ndata: {"data": "a\\nb"}\n\n: keepalive\n\nevent: exit\ndata: {}\n\n'
    expected = [b"event: stdout", b'data: {"data": "a\\nb"}', b"", b": keepalive", b""]
    expected += [b"event: exit", b"data: {}", b""]
    assert _lines(stream[:cut], stream[cut:]) == expected
    assert _lines(*(stream[i : i + 1] for i in range(len(stream)))) == expected


def test_a_last_line_without_its_end_is_kept() -> None:
    assert _lines(b"data: 1\nda", b"ta: 2") == [b"data: 1", b"data: 2"]
    assert _lines() == []
