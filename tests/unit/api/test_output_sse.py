"""Streamed exec frames: the ``escaped`` encoding round-trips any bytes; the default stays JSON."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncGenerator

import pytest

from app.api.output_sse import escape_chunk, exec_sse, parse_encoding
from app.client_events import ESCAPED, Exit, Output, SseDecoder, exec_stream_event
from app.errors import BadRequest
from app.providers.base import ExecEvent, ExecResult, OutputChunk

#: Bytes that are awkward for each layer: escapes, line ends, invalid UTF-8, a split character.
AWKWARD = [b"\\", b"\\n", b"\\\\n", b"\n", b"\r\n", b"\r", b"\xff\x00", b"\xe2\x82", b"\\x41", b"\\u0041", b"x\\"]


def _decode(wire: bytes, encoding: str, cut: int = 0) -> list[Output | Exit]:
    """The client's view of ``wire`` delivered in pieces of ``cut`` bytes (0: at once)."""
    decoder = SseDecoder()
    pieces = [wire[i : i + cut] for i in range(0, len(wire), cut)] if cut else [wire]
    events = [event for piece in pieces for event in decoder.feed_raw(piece)]
    items = [exec_stream_event(event, data, encoding) for event, data, _ in events]
    return [item for item in items if item is not None]


async def _frames(chunks: list[OutputChunk], encoding: str) -> bytes:
    async def events() -> AsyncGenerator[ExecEvent, None]:
        for chunk in chunks:
            yield chunk
        yield ExecResult(exit_code=0, stdout=b"", stderr=b"", duration_ms=5)

    return b"".join([frame async for frame in exec_sse(events(), parse_encoding(encoding))])


@pytest.mark.parametrize("data", AWKWARD)
def test_escaped_chunks_are_one_line_and_round_trip(data: bytes) -> None:
    escaped = escape_chunk(data)
    assert b"\n" not in escaped and b"\r" not in escaped
    assert _decode(b"event: stdout\ndata: " + escaped + b"\n\n", ESCAPED) == [Output("stdout", data)]


async def test_random_binary_on_both_streams_round_trips_in_order() -> None:
    rng = random.Random(15)
    pool = [*AWKWARD, b"\\", b"\n", b"\r", b"\xc3", b"\xa9"]
    chunks = []
    for index in range(200):
        data = b"".join(rng.choice(pool) if rng.random() < 0.3 else rng.randbytes(rng.randint(1, 40)) for _ in range(5))
        chunks.append(OutputChunk("stdout" if index % 3 else "stderr", data))
    wire = await _frames(chunks, "escaped")
    for cut in (0, 1, 7, 4096):
        received = _decode(wire, ESCAPED, cut)
        assert received[:-1] == [Output(chunk.stream, chunk.data) for chunk in chunks]
        assert isinstance(received[-1], Exit) and received[-1].exit_code == 0


async def test_the_default_stays_json_text_or_base64() -> None:
    wire = await _frames([OutputChunk("stdout", "hé\n".encode()), OutputChunk("stderr", b"\xff")], "json")
    assert wire.startswith(b'event: stdout\ndata: {"data":"h\xc3\xa9\\n","encoding":"utf-8"}\n\n')
    assert b'event: stderr\ndata: {"data":"/w==","encoding":"base64"}\n\n' in wire
    stderr = [json.loads(data) for event, data, _ in SseDecoder().feed(wire) if event == "stderr"]
    assert stderr == [{"data": "/w==", "encoding": "base64"}]
    assert _decode(wire, "json")[:2] == [Output("stdout", "hé\n".encode()), Output("stderr", b"\xff")]


def test_encoding_is_checked() -> None:
    assert parse_encoding(None) == "json" and parse_encoding("escaped") == "escaped"
    with pytest.raises(BadRequest) as err:
        parse_encoding("base32")
    assert err.value.code == "bad_request" and err.value.details.get("field") == "encoding"
