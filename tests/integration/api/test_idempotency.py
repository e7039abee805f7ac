"""``Idempotency-Key`` on create, snapshot, restore and builds: Stripe's semantics, over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.auth import make_token
from app.client import SandboxClient
from app.errors import ProviderUnavailable
from app.services.idempotency import request_hash
from app.storage.state import IdempotencyRecord
from app.storage.state.times import utcnow

Service = tuple[Any, httpx.AsyncClient, SandboxClient]


@pytest.fixture
def auth(api_secret: str) -> Callable[..., dict[str, str]]:
    def headers(key: str | None = None) -> dict[str, str]:
        values = {"Authorization": f"Bearer {make_token(api_secret.encode())}"}
        if key is not None:
            values["Idempotency-Key"] = key
        return values

    return headers


async def test_a_retry_with_the_same_key_gets_the_first_answer(
    service: Service, auth: Callable[..., dict[str, str]]
) -> None:
    app, raw, _ = service
    body = {"labels": {"job": "1"}}
    first = await raw.post("/v1/sandboxes", json=body, headers=auth("create-1"))
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = await raw.post("/v1/sandboxes", json={"labels": {"job": "1"}}, headers=auth("create-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert len(await app.state.services.provider.list({})) == 1
    other = await raw.post("/v1/sandboxes", json=body, headers=auth("create-2"))
    assert other.json()["id"] != first.json()["id"]
    assert len(await app.state.services.provider.list({})) == 2


async def test_the_same_key_with_another_body_is_a_conflict(
    service: Service, auth: Callable[..., dict[str, str]]
) -> None:
    _, raw, _ = service
    assert (await raw.post("/v1/sandboxes", json={"labels": {"a": "1"}}, headers=auth("k"))).status_code == 201
    other = await raw.post("/v1/sandboxes", json={"labels": {"a": "2"}}, headers=auth("k"))
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    bad = await raw.post("/v1/sandboxes", json={}, headers=auth("x" * 300))
    assert (bad.status_code, bad.json()["code"]) == (400, "bad_request")


async def test_concurrent_requests_with_one_key_make_one_sandbox(
    service: Service, auth: Callable[..., dict[str, str]]
) -> None:
    app, raw, _ = service
    answers = await asyncio.gather(*(raw.post("/v1/sandboxes", json={}, headers=auth("burst")) for _ in range(8)))
    created = [a for a in answers if a.status_code == 201]
    busy = [a for a in answers if a.status_code == 409]
    assert created and len(created) + len(busy) == 8
    assert {a.json()["code"] for a in busy} <= {"idempotency_in_progress"}
    assert len({a.json()["id"] for a in created}) == 1
    assert len(await app.state.services.provider.list({})) == 1


async def test_a_refusal_is_replayed_but_a_transient_failure_runs_again(
    service: Service, auth: Callable[..., dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, raw, _ = service
    refused = await raw.post("/v1/sandboxes", json={"network": "corp"}, headers=auth("refused"))
    assert refused.status_code == 422
    replay = await raw.post("/v1/sandboxes", json={"network": "corp"}, headers=auth("refused"))
    assert (replay.status_code, replay.json(), replay.headers["idempotent-replayed"]) == (422, refused.json(), "true")

    provider = app.state.services.provider
    real_create = provider.create
    calls = 0

    async def flaky(spec: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ProviderUnavailable("engine restarting")
        return await real_create(spec)

    monkeypatch.setattr(provider, "create", flaky)
    down = await raw.post("/v1/sandboxes", json={}, headers=auth("flaky"))
    assert down.status_code == 503
    up = await raw.post("/v1/sandboxes", json={}, headers=auth("flaky"))
    assert up.status_code == 201 and "idempotent-replayed" not in up.headers


async def _dead_replicas_key(app: Any, scope: str, key: str, payload: Any, resource_id: str) -> None:
    """The row a replica leaves when it dies mid-request: running, its owner gone."""
    import hashlib

    now = utcnow()
    await app.state.services.store.idempotency.begin(
        IdempotencyRecord(
            key=hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest(),
            request_hash=request_hash(payload),
            status="running",
            resource_id=resource_id,
            created_at=now,
            expires_at=now + timedelta(hours=1),
            owner="replica-that-died",
        )
    )


async def test_a_request_whose_replica_died_is_taken_over_without_a_second_sandbox(
    service: Service, auth: Callable[..., dict[str, str]]
) -> None:
    app, raw, client = service
    # The dead replica had made the sandbox but never answered.
    made = await client.create(sandbox_id="made-before-the-crash")
    await _dead_replicas_key(app, "POST /v1/sandboxes", "lost", {**_defaults(), "sandbox_id": None}, made["id"])
    retry = await raw.post("/v1/sandboxes", json={}, headers=auth("lost"))
    assert (retry.status_code, retry.json()["id"]) == (201, made["id"])
    assert len(await app.state.services.provider.list({})) == 1
    # It had not got that far: the retry makes the sandbox, under the id fixed at first sight.
    await _dead_replicas_key(app, "POST /v1/sandboxes", "early", {**_defaults(), "sandbox_id": None}, "fixed-id")
    retry = await raw.post("/v1/sandboxes", json={}, headers=auth("early"))
    assert (retry.status_code, retry.json()["id"]) == (201, "fixed-id")
    again = await raw.post("/v1/sandboxes", json={}, headers=auth("early"))
    assert again.json()["id"] == "fixed-id" and again.headers["idempotent-replayed"] == "true"


def _defaults() -> dict[str, Any]:
    from app.schemas.sandboxes import CreateSandboxRequest

    return CreateSandboxRequest().model_dump(mode="json")


async def test_snapshot_restore_and_build_take_keys_too(
    make_settings: Callable[..., Any], auth: Callable[..., dict[str, str]]
) -> None:
    from tests.fixtures.app import serve_in_process

    async with serve_in_process(make_settings()) as (app, raw, client):
        sandbox = await client.create()
        await client.exec(sandbox["id"], ["sh", "-c", "echo data > /workspace/f"])
        path = f"/v1/sandboxes/{sandbox['id']}/snapshots"
        snap = await raw.post(path, json={"reason": "ckpt"}, headers=auth("snap"))
        assert snap.status_code == 201, snap.text
        again = await raw.post(path, json={"reason": "ckpt"}, headers=auth("snap"))
        assert again.json()["id"] == snap.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert len(await app.state.services.snapshots.list(sandbox_id=sandbox["id"])) == 1

        restore_path = f"/v1/snapshots/{snap.json()['id']}/restore"
        restored = await raw.post(restore_path, json={}, headers=auth("restore"))
        assert restored.status_code == 201, restored.text
        replay = await raw.post(restore_path, json={}, headers=auth("restore"))
        assert replay.json()["id"] == restored.json()["id"]
        assert len(await app.state.services.provider.list({})) == 2

        build = {"build_id": "b-9", "repo": {"owner": "acme", "name": "app"}}
        first = await raw.post("/v1/builds", json=build, headers=auth("build"))
        assert first.status_code == 202, first.text
        other = await raw.post("/v1/builds", json={**build, "env": {"X": "1"}}, headers=auth("build"))
        assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
        await raw.post("/v1/builds/b-9/cancel", headers=auth())
