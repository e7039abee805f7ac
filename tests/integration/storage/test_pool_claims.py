"""The conditional claim of a warm member, raced on SQLite and PostgreSQL.

Two ``StateStore`` instances on one database play two replicas; fifty claimers
race for ten warm members. Exactly ten win, each a different member.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from app.errors import Conflict
from app.services.pool_members import POOL_LABEL
from app.storage.state import SandboxRecord, StateStore
from app.storage.state.times import utcnow

MEMBERS = 10
CLAIMERS = 50


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _claim_one(store: StateStore, pool: str, session_id: str) -> str | None:
    """What PoolService._take does: read the ready members, try them in random order."""
    for _round in range(3):
        ready = await store.sandboxes.list({POOL_LABEL: pool}, statuses=["warm"])
        if not ready:
            return None
        random.shuffle(ready)
        for member in ready:
            if await store.sandboxes.transition(
                member.id, ["warm"], "running", session_id=session_id, add_labels={"claimed-by": session_id}
            ):
                return member.id
    return None


async def test_fifty_claims_on_ten_members_take_each_member_once(state_url: str) -> None:
    replicas = [StateStore(state_url), StateStore(state_url)]
    for store in replicas:
        await store.open()
    try:
        pool = f"race-{random.randrange(1 << 30)}"  # the PostgreSQL cluster is shared by the session
        now = utcnow()
        ids = [f"{pool}-m{i}" for i in range(MEMBERS)]
        for sandbox_id in ids:
            await replicas[0].sandboxes.insert(
                SandboxRecord(
                    id=sandbox_id, provider="fake", status="warm", created_at=now, updated_at=now,
                    provider_object_id=f"obj-{sandbox_id}", labels={POOL_LABEL: pool},
                )
            )  # fmt: skip
        results = await asyncio.wait_for(
            asyncio.gather(*(_claim_one(replicas[i % 2], pool, f"sess-{i}") for i in range(CLAIMERS))), timeout=60
        )
        won = [r for r in results if r is not None]
        assert sorted(won) == sorted(ids)  # every member once, no member twice
        assert results.count(None) == CLAIMERS - MEMBERS
        records = {r.id: r for r in await replicas[1].sandboxes.list({POOL_LABEL: pool})}
        sessions = {records[i].session_id for i in ids}
        assert len(sessions) == MEMBERS and all(records[i].status == "running" for i in ids)
        for sandbox_id in ids:  # the label went in with the claim, from the winner's session
            assert records[sandbox_id].labels["claimed-by"] == records[sandbox_id].session_id
        claimed = await replicas[0].sandboxes.list({"claimed-by": records[ids[0]].session_id or ""})
        assert [r.id for r in claimed] == [ids[0]]
        # A claimed member is no longer anyone's to evict.
        assert not await replicas[0].sandboxes.transition(ids[0], ["warm", "running"], "deleting")
    finally:
        for store in replicas:
            await store.aclose()


async def _claim_renaming(store: StateStore, pool: str, index: int) -> str | None:
    """A claim that binds the caller's id, as PoolService._take does with a sandbox_id."""
    for _round in range(3):
        ready = await store.sandboxes.list({POOL_LABEL: pool}, statuses=["warm"])
        if not ready:
            return None
        random.shuffle(ready)
        for member in ready:
            if await store.sandboxes.transition(
                member.id, ["warm"], "running", session_id=f"s-{index}", new_id=f"{pool}-caller-{index}"
            ):
                return member.id
    return None


async def test_renaming_claims_bind_each_caller_id_to_one_member(state_url: str) -> None:
    replicas = [StateStore(state_url), StateStore(state_url)]
    for store in replicas:
        await store.open()
    try:
        pool = f"rename-{random.randrange(1 << 30)}"
        now = utcnow()
        ids = [f"{pool}-m{i}" for i in range(MEMBERS)]
        for sandbox_id in ids:
            await replicas[0].sandboxes.insert(
                SandboxRecord(
                    id=sandbox_id, provider="fake", status="warm", created_at=now, updated_at=now,
                    provider_object_id=f"obj-{sandbox_id}", labels={POOL_LABEL: pool, "team": "a"},
                )
            )  # fmt: skip
            await replicas[0].sandboxes.add_event(sandbox_id, "pool_member_ready")
        results = await asyncio.wait_for(
            asyncio.gather(*(_claim_renaming(replicas[i % 2], pool, i) for i in range(CLAIMERS))), timeout=60
        )
        assert sorted(r for r in results if r is not None) == sorted(ids)
        renamed = await replicas[1].sandboxes.list({POOL_LABEL: pool})
        assert len(renamed) == MEMBERS
        for record in renamed:
            index = int(record.id.rsplit("-", 1)[1])
            assert record.id == f"{pool}-caller-{index}" and record.session_id == f"s-{index}"
            assert record.key in ids and results[index] == record.key  # the stable key is the former id
            assert record.labels == {POOL_LABEL: pool, "team": "a"}  # label rows moved with the row
            for alias in (record.key, record.provider_object_id or ""):
                assert (await replicas[0].sandboxes.get(alias)) == record
            assert [e["kind"] for e in await replicas[0].sandboxes.list_events(record.id)] == ["pool_member_ready"]
            assert await replicas[0].sandboxes.list_events(record.key or "") == []
        assert len(await replicas[0].sandboxes.list({"team": "a"})) == MEMBERS
    finally:
        for store in replicas:
            await store.aclose()


async def test_a_renaming_claim_never_takes_an_id_in_use(state_url: str) -> None:
    store = StateStore(state_url)
    await store.open()
    try:
        tag = f"taken-{random.randrange(1 << 30)}"
        now = utcnow()
        for sandbox_id, status in ((f"{tag}-member", "warm"), (f"{tag}-other", "running"), (f"{tag}-gone", "deleted")):
            await store.sandboxes.insert(
                SandboxRecord(id=sandbox_id, provider="fake", status=status, created_at=now, updated_at=now)
            )
        # Renamed once: its former id stays its key and can never be bound again.
        assert await store.sandboxes.transition(f"{tag}-member", ["warm"], "warm", new_id=f"{tag}-renamed")
        for taken in (f"{tag}-other", f"{tag}-gone", f"{tag}-member"):
            await store.sandboxes.insert(
                SandboxRecord(id=f"{tag}-w-{taken}", provider="fake", status="warm", created_at=now, updated_at=now)
            )
            with pytest.raises(Conflict):
                await store.sandboxes.transition(f"{tag}-w-{taken}", ["warm"], "running", new_id=taken)
            unchanged = await store.sandboxes.get(f"{tag}-w-{taken}")
            assert unchanged is not None and unchanged.status == "warm"  # all or nothing
    finally:
        await store.aclose()
