"""The contract's shared pieces: the argv check every provider uses, and the lanes of ``import_tar``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest

from app.errors import BadRequest
from app.providers.base import LaneSplittable, check_argv, lane_rounds
from app.snapshots.sections import Section


@pytest.mark.parametrize("argv", [[], (), "ls -l", ["echo", "a\0b"], ["echo", 3]])
def test_check_argv_refuses_on_the_command_field(argv: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        check_argv(argv)
    assert caught.value.details == {"field": "command"}
    assert caught.value.status_code == 400


def test_check_argv_accepts_a_list_or_tuple_of_strings() -> None:
    check_argv(["sh", "-c", "true"])
    check_argv(("",))


async def _plain() -> AsyncIterator[bytes]:
    yield b"tar"


class _Splittable:
    """A stream offering lanes; records what the importer asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __aiter__(self) -> _Splittable:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration

    async def _rounds(self) -> AsyncGenerator[Sequence[AsyncIterator[bytes]], None]:
        yield [_plain(), _plain()]

    def rounds(self, lanes: int) -> AsyncGenerator[Sequence[AsyncIterator[bytes]], None]:
        self.asked.append(lanes)
        return self._rounds()


async def test_lane_rounds_only_for_a_splittable_stream_and_two_lanes_or_more() -> None:
    assert lane_rounds(_plain(), 4) is None
    splittable = _Splittable()
    assert lane_rounds(splittable, 1) is None
    assert splittable.asked == []
    rounds = lane_rounds(splittable, 3)
    assert rounds is not None
    assert [len(streams) async for streams in rounds] == [2]
    assert splittable.asked == [3]


def test_a_snapshot_section_is_lane_splittable() -> None:
    # Matched by shape: the archive format offers the contract without importing the providers.
    assert isinstance(Section(pump=None, index=0), LaneSplittable)  # type: ignore[arg-type]
