"""The client's SSE decoder: events cut anywhere by the transport come out whole."""

from __future__ import annotations

import pytest

from app.client_events import SseDecoder, SseEvent

STREAM = (
    b'event: stdout\r\ndata: {"data": "a\\nb"}\n\n'
    b": keepalive\n\n"
    b"id: 7\nevent: exit\ndata: one\ndata: two\n\n"
    b"data: after\n\n"
)
EVENTS = [("stdout", '{"data": "a\\nb"}', None), ("exit", "one\ntwo", "7"), ("message", "after", "7")]


def _decode(*parts: bytes) -> list[SseEvent]:
    decoder = SseDecoder()
    return [event for part in parts for event in decoder.feed(part)]


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_events_split_anywhere_come_out_whole(cut: int) -> None:
    assert _decode(STREAM[:cut], STREAM[cut:]) == EVENTS


def test_events_fed_byte_by_byte() -> None:
    assert _decode(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EVENTS


def test_an_event_the_stream_ended_inside_is_not_dispatched() -> None:
    assert _decode(b"data: 1\n\ndata: 2\n") == [("message", "1", None)]
