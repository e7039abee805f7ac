"""The reconciler against a real provider double: what it adopts, marks and deletes, and what it leaves alone."""

from __future__ import annotations

from typing import Any

import httpx

from app.client import SandboxClient
from app.services.pool_members import POOL_LABEL
from app.services.sandboxes import ID_LABEL

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


async def test_a_provider_object_without_a_live_record_is_deleted(service: Service) -> None:
    app, _, client = service
    services = app.state.services
    kept = await client.create(sandbox_id="kept")
    lost = await client.create(sandbox_id="lost")
    await services.store.sandboxes.update("lost", status="deleted")  # the record says gone, the object is not
    counts = await services.reconciler.reconcile()
    assert counts["orphans_deleted"] == 1
    assert [o.provider_object_id for o in await services.provider.list({})] == [kept["provider_object_id"]]
    assert lost["provider_object_id"] != kept["provider_object_id"]
