"""The reconciler against a real provider double: what it adopts, marks and deletes, and what it leaves alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from app.client import SandboxClient
from app.services.pool_members import POOL_LABEL
from app.services.reconciler import adopt_interrupted
from app.services.sandboxes import ID_LABEL
from app.settings import Settings
from app.storage.state import SandboxRecord
from app.storage.state.times import utcnow
from tests.fixtures.app import serve_in_process

Service = tuple[Any, httpx.AsyncClient, SandboxClient]


async def test_a_claimed_member_under_a_new_id_is_neither_vanished_nor_an_orphan(service: Service) -> None:
    app, _, client = service
    services = app.state.services
    created = await client.create(sandbox_id="member-1")
    records = services.store.sandboxes
    # As a warm pool member that a claim then binds to the caller's id.
    await records.update("member-1", status="warm", labels={POOL_LABEL: "p"})
    assert await records.transition("member-1", ["warm"], "running", session_id="s", new_id="caller-1")

    counts = await services.reconciler.reconcile()
    assert counts == {"adopted": 0, "updated": 0, "vanished": 0, "orphans_deleted": 0}
    after = await client.get("caller-1")
    assert after["status"] == "running" and after["provider_object_id"] == created["provider_object_id"]
    objects = await services.provider.list({})
    assert [o.provider_object_id for o in objects] == [created["provider_object_id"]]
    assert objects[0].labels[ID_LABEL] == "member-1"  # the provider object keeps the stable key
    result = await client.exec("caller-1", ["echo", "alive"])
    assert result["stdout"] == "alive\n"
    # Found by the former id too, and deleted through it.
    assert (await client.get("member-1"))["id"] == "caller-1"
    await client.delete("member-1")
    assert await services.provider.list({}) == []


async def test_a_provider_object_without_a_live_record_is_deleted_after_the_grace_period(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve_in_process(make_settings(reconcile_grace_seconds=0.5)) as (app, _, client):
        services = app.state.services
        kept = await client.create(sandbox_id="kept")
        await client.create(sandbox_id="lost")
        await services.store.sandboxes.update("lost", status="deleted")  # the record says gone, the object is not
        young = await services.reconciler.reconcile()
        assert young["orphans_deleted"] == 0  # younger than the grace: maybe a create in flight elsewhere
        await asyncio.sleep(0.6)
        counts = await services.reconciler.reconcile()
        assert counts["orphans_deleted"] == 1
        assert [o.provider_object_id for o in await services.provider.list({})] == [kept["provider_object_id"]]


async def test_a_creating_record_is_left_to_its_live_owner_and_failed_once_the_owner_is_gone(
    service: Service,
) -> None:
    app, _, _ = service
    services = app.state.services
    records = services.store.sandboxes
    now = utcnow()
    me = services.leases.replica_id
    for sandbox_id, owner in (("mine", me), ("dead-owner", "replica-that-died"), ("legacy", None)):
        await records.insert(
            SandboxRecord(
                id=sandbox_id, provider="fake", status="creating", created_at=now, updated_at=now, owner=owner
            )
        )
    counts = await services.reconciler.reconcile()
    assert counts == {"adopted": 0, "updated": 0, "vanished": 0, "orphans_deleted": 0}
    statuses = {r.id: r.status for r in await records.list()}
    # Ours (alive) and the ownerless young one wait; the dead replica's create is over.
    assert statuses == {"mine": "creating", "legacy": "creating", "dead-owner": "failed"}


async def test_a_record_is_never_more_pessimistic_or_optimistic_than_the_provider(service: Service) -> None:
    """A kill mid-create or mid-stop leaves the record wrong; reconciliation makes it the provider's."""
    app, _, client = service
    services = app.state.services
    records = services.store.sandboxes
    await client.create(sandbox_id="runs")
    halted = await client.create(sandbox_id="halted")
    adoptee = await client.create(sandbox_id="adoptee")
    # Recorded stopped while it runs: exec would be refused with 409.
    await records.update("runs", status="stopped")
    # Recorded running while the provider stopped it (a stop whose answer was lost).
    await services.provider.stop(halted["provider_object_id"])
    # Recorded creating by a replica killed after the provider made the sandbox.
    await records.update(
        "adoptee", status="creating", provider_object_id=None, owner="replica-that-died", expires_at=None
    )

    counts = await services.reconciler.reconcile()
    assert (counts["updated"], counts["adopted"]) == (2, 1)
    assert (await client.get("runs"))["status"] == "running"
    assert (await client.exec("runs", ["echo", "ok"]))["stdout"] == "ok\n"
    assert (await client.get("halted"))["status"] == "stopped"
    adopted = await client.get("adoptee")
    assert adopted["status"] == "running" and adopted["provider_object_id"] == adoptee["provider_object_id"]
    assert adopted["expires_at"] is not None  # nobody may know it: it does not run forever


async def test_a_build_taking_over_a_dead_create_adopts_the_sandbox_it_made(service: Service) -> None:
    """What a build resumed under its lease does with its dead runner's half-recorded sandbox."""
    app, _, client = service
    services = app.state.services
    records = services.store.sandboxes
    made = await client.create(sandbox_id="build-box")
    # The runner died after the provider made the sandbox, before the record said so.
    await records.update("build-box", status="creating", provider_object_id=None)
    record = await records.get("build-box")
    assert record is not None
    adopted = await adopt_interrupted(records, services.provider, record)
    assert (adopted.status, adopted.provider_object_id) == ("running", made["provider_object_id"])
    assert [e["kind"] for e in await services.sandboxes.events("build-box")][-1] == "adopted"
    # Nothing made yet: the record stays as it is (the build then makes a new sandbox).
    now = utcnow()
    await records.insert(
        SandboxRecord(id="not-made", provider="fake", status="creating", created_at=now, updated_at=now)
    )
    empty = await records.get("not-made")
    assert empty is not None
    assert (await adopt_interrupted(records, services.provider, empty)).status == "creating"
    await client.delete("build-box")
