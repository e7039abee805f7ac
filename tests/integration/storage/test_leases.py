"""Leases on SQLite and a real PostgreSQL: one holder at a time, renewal, hand-back and takeover."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.services.leases import LeaseKeeper
from app.storage.state import StateStore


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[StateStore]]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = [StateStore(url), StateStore(url), StateStore(url)]  # three replicas
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.aclose()


def _name(prefix: str) -> str:
    return f"{prefix}-{random.randrange(1 << 30)}"  # the PostgreSQL cluster is shared by the session


async def test_one_holder_among_concurrent_acquirers(stores: list[StateStore]) -> None:
    name = _name("job")
    results = await asyncio.gather(*(stores[i % 3].leases.acquire(name, f"r{i}", 30) for i in range(12)))
    assert results.count(True) == 1
    holder = f"r{results.index(True)}"
    assert [lease.owner for lease in await stores[0].leases.list() if lease.name == name] == [holder]
    # The holder extends its own lease; others still cannot take it.
    assert await stores[1].leases.acquire(name, holder, 30)
    assert not await stores[2].leases.acquire(name, "someone-else", 30)


async def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_renew_it(stores: list[StateStore]) -> None:
    name = _name("build")
    assert await stores[0].leases.acquire(name, "old", 0.3)
    assert not await stores[1].leases.acquire(name, "new", 30)
    await asyncio.sleep(0.4)
    assert await stores[1].leases.acquire(name, "new", 30)
    assert await stores[0].leases.renew({name}, "old", 30) == set()
    assert await stores[1].leases.renew({name}, "new", 30) == {name}


async def test_release_hands_back_at_once(stores: list[StateStore]) -> None:
    name = _name("pools")
    assert await stores[0].leases.acquire(name, "a", 300)
    assert await stores[0].leases.release({name}, "b") == 0  # not b's to release
    assert await stores[0].leases.release({name}, "a") == 1
    assert await stores[1].leases.acquire(name, "b", 300)


async def test_a_keeper_that_loses_its_lease_stops_the_work_bound_to_it(stores: list[StateStore]) -> None:
    name = _name("work")
    keeper = LeaseKeeper("keeper-a", stores[0].leases, stores[0].replicas, ttl=0.6)
    await keeper.start()
    try:
        started = asyncio.Event()
        stopped = asyncio.Event()

        async def work() -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            finally:
                stopped.set()

        runner = asyncio.create_task(keeper.run_leased(name, work))
        await asyncio.wait_for(started.wait(), 5)
        assert keeper.holds(name)
        # Another replica steals it (as after a long stall of ours): the next renewal notices.
        await stores[1].leases.release({name}, "keeper-a")
        assert await stores[1].leases.acquire(name, "keeper-b", 30)
        await asyncio.wait_for(stopped.wait(), 5)
        assert await asyncio.wait_for(runner, 5) is True
        assert not keeper.holds(name)
        assert [lease.owner for lease in await stores[2].leases.list() if lease.name == name] == ["keeper-b"]
        assert "keeper-a" in {r.id for r in await stores[2].replicas.live(within=5)}
    finally:
        await keeper.aclose()
    assert "keeper-a" not in {r.id for r in await stores[2].replicas.live(within=5)}
