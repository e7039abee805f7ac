"""Group commit of index lookups: one batched call answers every request that waited."""

from __future__ import annotations

import asyncio

import pytest

from app.snapshots.coalescer import Coalescer


class GatedStore:
    """A batched lookup that records its calls and answers once ``gate`` is set (4 is unknown)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()

    async def run(self, keys: list[int]) -> dict[int, str]:
        self.calls.append(sorted(keys))
        await self.gate.wait()
        return {k: str(k) for k in keys if k != 4}


async def test_requests_made_while_a_batch_runs_share_the_next_one() -> None:
    store = GatedStore()
    coalescer: Coalescer[int, str] = Coalescer(store.run)
    first = asyncio.create_task(coalescer.get(1))
    await asyncio.sleep(0)  # the first batch is in flight
    rest = [asyncio.create_task(coalescer.get(k)) for k in (2, 3, 3, 4)]
    await asyncio.sleep(0)
    store.gate.set()
    assert await first == "1"
    assert [await task for task in rest] == ["2", "3", "3", None]  # absent: None
    assert store.calls == [[1], [2, 3, 4]]  # two calls for five requests, distinct keys


async def test_a_failed_batch_fails_its_requests_only() -> None:
    async def run(keys: list[int]) -> dict[int, int]:
        if 0 in keys:
            raise OSError("state store down")
        return {k: k for k in keys}

    coalescer: Coalescer[int, int] = Coalescer(run)
    with pytest.raises(OSError, match="down"):
        await coalescer.get(0)
    assert await coalescer.get(5) == 5


async def test_cancelled_requests_are_left_out_and_settle_waits_for_the_batch() -> None:
    store = GatedStore()
    coalescer: Coalescer[int, str] = Coalescer(store.run)
    busy = asyncio.create_task(coalescer.get(1))
    await asyncio.sleep(0)
    gone = asyncio.create_task(coalescer.get(2))
    await asyncio.sleep(0)
    gone.cancel()
    settled = asyncio.create_task(coalescer.settle())
    await asyncio.sleep(0)
    assert not settled.done()  # batch [1] still in flight
    store.gate.set()
    await settled
    assert await busy == "1"
    assert store.calls == [[1]]  # the cancelled request never reached the store
