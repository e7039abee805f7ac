"""Length-prefixed frames of a streamed command: whole frames back, however the bytes were cut."""

from __future__ import annotations

import json
import random

import pytest

from app.client_events import ApiError, Exit, Output, exec_frame_event
from app.frames import FRAME_HEADER, FrameDecoder, FrameError, FrameKind, frame

FRAMES = [
    (FrameKind.STDOUT, b"hello\n"),
    (FrameKind.STDERR, b""),
    (FrameKind.STDOUT, bytes(range(256)) * 300),
    (9, b"a kind from a newer service"),
    (FrameKind.STDERR, b"\x00\xff" * 5),
    (FrameKind.EXIT, b'{"exit_code": 3, "timed_out": false, "truncated": true, "duration_ms": 12}'),
]
WIRE = b"".join(frame(kind, payload) for kind, payload in FRAMES)


def test_the_header_is_kind_three_zero_bytes_and_a_big_endian_length() -> None:
    assert frame(FrameKind.STDERR, b"abc") == b"\x02\x00\x00\x00\x00\x00\x00\x03abc"
    assert FRAME_HEADER.size == 8


@pytest.mark.parametrize("seed", range(20))
def test_frames_come_back_whole_however_the_bytes_were_cut(seed: int) -> None:
    rng = random.Random(seed)
    decoder, got, at = FrameDecoder(), [], 0
    while at < len(WIRE):
        step = rng.choice([1, 3, 8, 9, 1000, 65536])
        got += decoder.feed(WIRE[at : at + step])
        at += step
    decoder.close()
    assert got == FRAMES


def test_a_payload_that_came_in_one_piece_is_not_copied() -> None:
    payload = b"x" * 100_000
    decoder = FrameDecoder()
    decoder.feed(FRAME_HEADER.pack(FrameKind.STDOUT, len(payload)))
    [(_, data)] = decoder.feed(payload)
    assert data is payload


@pytest.mark.parametrize("cut", [1, 7, 8, 20])
def test_bytes_that_end_inside_a_frame_are_an_error(cut: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(FrameKind.STDOUT, b"y" * 30)[:cut])
    with pytest.raises(FrameError):
        decoder.close()


def test_frames_as_client_events() -> None:
    assert exec_frame_event(FrameKind.STDOUT, b"\xff") == Output("stdout", b"\xff")
    assert exec_frame_event(FrameKind.STDERR, b"e") == Output("stderr", b"e")
    assert exec_frame_event(FrameKind.EXIT, FRAMES[-1][1]) == Exit(3, False, True, 12)
    assert exec_frame_event(9, b"later") is None
    error = json.dumps({"code": "sandbox_not_running", "error": "it stopped"}).encode()
    with pytest.raises(ApiError) as raised:
        exec_frame_event(FrameKind.ERROR, error)
    assert raised.value.code == "sandbox_not_running"
