"""Output events: text stays text across chunk boundaries, anything else is base64."""

from __future__ import annotations

from app.schemas.streams import ChunkEncoder, OutputEvent


def test_a_character_split_between_chunks_is_held_not_broken() -> None:
    encoder = ChunkEncoder()
    text = "héllo €".encode()
    first = encoder.encode(text[:2])  # "h" and the first byte of "é"
    assert first == OutputEvent(data="h") and encoder.held == 1
    assert encoder.encode(text[2:-1]) == OutputEvent(data="éllo ")
    assert encoder.held == 2
    assert encoder.encode(text[-1:]) == OutputEvent(data="€")
    assert encoder.flush() is None


def test_invalid_utf8_goes_out_whole_as_base64() -> None:
    encoder = ChunkEncoder()
    event = encoder.encode(b"ok\xff\x00")
    assert event is not None and event.encoding == "base64" and event.raw() == b"ok\xff\x00"


def test_an_incomplete_character_at_the_end_is_flushed_as_base64() -> None:
    encoder = ChunkEncoder()
    assert encoder.encode(b"\xe2\x82") is None
    tail = encoder.flush()
    assert tail is not None and tail.encoding == "base64" and tail.raw() == b"\xe2\x82"
