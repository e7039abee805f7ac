"""``OutputPump``: caps per stream, order, joining what queued up, errors after the chunks."""

from __future__ import annotations

import asyncio

import pytest

from app.providers.base import OutputChunk
from app.providers.streaming import OutputPump, collect, replay


async def _never_kill() -> None:
    raise AssertionError("no deadline in these tests")


async def test_caps_each_stream_and_flags_truncation() -> None:
    pump = OutputPump(max_output_bytes=5)

    async def reader() -> None:
        await pump.put("stdout", b"abc")
        await pump.put("stderr", b"123456")
        await pump.put("stdout", b"defg")

    chunks = [c async for c in pump.chunks(reader(), timeout=60, kill=_never_kill)]
    out = b"".join(c.data for c in chunks if c.stream == "stdout")
    err = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert (out, err, pump.truncated) == (b"abcde", b"12345", True)
    assert pump.result(0).exit_code == 0 and not pump.result(0).timed_out


async def test_queued_chunks_of_one_stream_are_joined_in_order() -> None:
    pump = OutputPump(max_output_bytes=1 << 20)
    filled = asyncio.Event()

    async def reader() -> None:
        for part in (b"a", b"b", b"c"):
            await pump.put("stdout", part)
        await pump.put("stderr", b"x")
        await pump.put("stdout", b"d")
        filled.set()

    task = asyncio.ensure_future(reader())
    await filled.wait()  # everything queued before the consumer reads
    chunks = [c async for c in pump.chunks(task, timeout=60, kill=_never_kill)]
    assert chunks == [OutputChunk("stdout", b"abc"), OutputChunk("stderr", b"x"), OutputChunk("stdout", b"d")]


async def test_a_reader_error_comes_after_its_chunks() -> None:
    pump = OutputPump(max_output_bytes=100)

    async def reader() -> None:
        await pump.put("stdout", b"before")
        raise ConnectionError("stream broke")

    seen = []
    with pytest.raises(ConnectionError):
        async for chunk in pump.chunks(reader(), timeout=60, kill=_never_kill):
            seen.append(chunk)
    assert seen == [OutputChunk("stdout", b"before")]


async def test_replay_then_collect_round_trips_a_result() -> None:
    from app.providers.base import ExecResult

    result = ExecResult(exit_code=3, stdout=b"o", stderr=b"e", truncated=True, duration_ms=7)
    assert await collect(replay(result)) == result
