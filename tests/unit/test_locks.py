"""KeyedLocks: serialises one key, leaves other keys free, forgets idle keys."""

from __future__ import annotations

import asyncio

from app.locks import KeyedLocks


async def test_one_key_is_serialised_and_forgotten_when_idle() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []
    gate = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("first-in")
            await gate.wait()
            order.append("first-out")

    async def second() -> None:
        async with locks.hold("a"):
            order.append("second-in")

    t1 = asyncio.create_task(first())
    await asyncio.sleep(0)
    t2 = asyncio.create_task(second())
    await asyncio.sleep(0)
    assert locks.busy("a") and len(locks) == 1
    gate.set()
    await asyncio.gather(t1, t2)
    assert order == ["first-in", "first-out", "second-in"]
    assert not locks.busy("a") and len(locks) == 0


async def test_other_keys_do_not_wait() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    async with locks.hold("a"):
        async with asyncio.timeout(1):
            async with locks.hold("b"):
                assert len(locks) == 2
    assert len(locks) == 0


async def test_entry_released_when_holder_raises_or_waiter_is_cancelled() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    try:
        async with locks.hold("a"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0

    async def wait_for_a() -> None:
        async with locks.hold("a"):
            pass

    async with locks.hold("a"):
        waiter = asyncio.create_task(wait_for_a())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert len(locks) == 0
