"""``/v1/pools`` and ``/api/warm-sandbox`` request handling; plain pool claims on the fake and a real provider."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import make_token
from app.services.sandboxes import CLAIM_ENV_FILE
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.support import missing_component


@pytest.fixture
async def api(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Any, httpx.AsyncClient, dict[str, str]]]:
    settings = make_settings(allowed_control_plane_hosts=["127.0.0.1"])
    secret = settings.resolved_secrets()[0]
    async with serve_in_process(settings) as (app, raw, _client):
        yield app, raw, {"Authorization": f"Bearer {make_token(secret)}"}


async def test_put_validation(api: tuple[Any, httpx.AsyncClient, dict[str, str]]) -> None:
    _, raw, auth = api
    good: dict[str, Any] = {"repo": {"owner": "acme", "name": "app"}, "target": 0}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("p1", {**good, "unexpected": 1}),
        ("p1", {**good, "target": 51}),
        ("p1", {**good, "target": -1}),
        ("p1", {**good, "repo": {"owner": "acme", "name": "app", "tag": "x"}}),
        ("p1", {**good, "repo": {"owner": "acme"}}),
        ("p1", {**good, "repo": {"owner": "ac me", "name": "app"}}),
        ("p1", {**good, "max_age_seconds": 0}),
        ("p1", {"repo": good["repo"]}),
        ("bad name!", good),
    ]
    for name, body in cases:
        response = await raw.put(f"/v1/pools/{name}", json=body, headers=auth)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["code"] == "validation_error"
    unauthenticated = await raw.put("/v1/pools/p1", json=good)
    assert unauthenticated.status_code == 401
    assert (await raw.get("/v1/pools", headers=auth)).json() == {"pools": []}


async def test_put_get_list_delete_shape(api: tuple[Any, httpx.AsyncClient, dict[str, str]]) -> None:
    _, raw, auth = api
    body = {"repo": {"owner": "acme", "name": "app", "branch": "dev"}, "image": "img:1", "target": 0}
    put = await raw.put("/v1/pools/web", json=body, headers=auth)
    assert put.status_code == 200, put.text
    view = put.json()
    assert view["repo"] == {"owner": "acme", "name": "app", "branch": "dev"}
    assert (view["name"], view["image"], view["target"], view["max_age_seconds"]) == ("web", "img:1", 0, 3600)
    assert (view["ready"], view["creating"], view["claimed"], view["implicit"]) == (0, 0, 0, False)
    again = await raw.put("/v1/pools/web", json={**body, "max_age_seconds": 60}, headers=auth)
    assert again.json()["max_age_seconds"] == 60 and again.json()["created_at"] == view["created_at"]
    listed = (await raw.get("/v1/pools", headers=auth)).json()["pools"]
    assert [p["name"] for p in listed] == ["web"]
    assert set(listed[0]) == set(view)
    assert (await raw.get("/v1/pools/web", headers=auth)).json()["max_age_seconds"] == 60
    deleted = await raw.delete("/v1/pools/web", headers=auth)
    assert deleted.json() == {"name": "web", "deleted_members": 0}
    for response in (await raw.get("/v1/pools/web", headers=auth), await raw.delete("/v1/pools/web", headers=auth)):
        assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_from_pool_refusals(api: tuple[Any, httpx.AsyncClient, dict[str, str]]) -> None:
    _, raw, auth = api
    session = {"session_id": "s", "control_plane_url": "http://127.0.0.1:1/", "sandbox_auth_token": "t"}
    await raw.put("/v1/pools/web", json={"repo": {"owner": "acme", "name": "app"}, "target": 0}, headers=auth)
    cases = [
        ({"from_pool": "web"}, 400),  # a session pool: nothing to hand its sandbox to without a session
        ({"from_pool": "nope", "session": session}, 404),
        ({"from_pool": "web", "session": session, "repo": {"owner": "acme", "name": "other"}}, 400),
        ({"from_pool": "web", "session": session, "from_snapshot": "snap"}, 422),
    ]
    for body, status in cases:
        response = await raw.post("/v1/sandboxes", json=body, headers=auth)
        assert response.status_code == status, (body, response.text)


async def test_warm_sandbox_refuses_a_foreign_control_plane_before_anything(
    api: tuple[Any, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, raw, auth = api
    body = {"repo_owner": "acme", "repo_name": "app", "control_plane_url": "https://evil.example.com/"}
    response = await raw.post("/api/warm-sandbox", json=body, headers=auth)
    assert (response.status_code, response.json()["code"]) == (400, "host_not_allowed")
    # An unknown field is ignored (compat input is tolerant); the host is still refused.
    unknown = await raw.post("/api/warm-sandbox", json={**body, "extra": 1}, headers=auth)
    assert (unknown.status_code, unknown.json()["code"]) == (400, "host_not_allowed")
    assert (await raw.get("/v1/pools", headers=auth)).json() == {"pools": []}
    assert await app.state.services.provider.list({}) == []


async def test_plain_pools_serve_plain_claims(make_settings: Any) -> None:
    """A pool without a repo keeps plain sandboxes ready; a claim gets one under the caller's id, env and labels."""
    async with serve_in_process(make_settings()) as (app, raw, client):
        secret = app.state.services.settings.resolved_secrets()[0]
        auth = {"Authorization": f"Bearer {make_token(secret)}"}
        body = {"target": 2, "env": {"POOL_LEVEL": "p"}, "labels": {"tier": "rl"}, "network": "none"}
        put = await raw.put("/v1/pools/rollouts", json=body, headers=auth)
        assert put.status_code == 200, put.text
        view = put.json()
        assert (view["kind"], view["repo"], view["env"], view["labels"]) == (
            "plain",
            None,
            ["POOL_LEVEL"],
            {"tier": "rl"},
        )
        services = app.state.services
        for _ in range(100):
            view = (await raw.get("/v1/pools/rollouts", headers=auth)).json()
            if view["ready"] == 2:
                break
            await asyncio.sleep(0.05)
        assert view["ready"] == 2
        members = {r.id for r in await services.sandboxes.list({"sandbox-control.pool": "rollouts"})}

        claim = {"from_pool": "rollouts", "sandbox_id": "rollout-1", "env": {"TASK_TOKEN": "s3cr3t-v@lue"},
                 "labels": {"task": "7"}, "ttl_seconds": 600}  # fmt: skip
        claimed = await raw.post("/v1/sandboxes", json=claim, headers=auth)
        assert claimed.status_code == 201, claimed.text
        sandbox = claimed.json()
        assert sandbox["id"] == "rollout-1" and sandbox["status"] == "running"
        assert sandbox["labels"]["task"] == "7" and sandbox["labels"]["tier"] == "rl"
        assert sandbox["expires_at"] is not None and sandbox["network"] == "none"
        record = await services.sandboxes.get("rollout-1")
        assert record.key in members and record.claimed
        # Every command sees the claim's env and the pool's, as in a created sandbox.
        result = await client.exec("rollout-1", ["sh", "-c", 'echo "$TASK_TOKEN $POOL_LEVEL"'])
        assert result["stdout"] == "s3cr3t-v@lue p\n"
        shell = await client.exec("rollout-1", "echo $TASK_TOKEN")
        assert shell["stdout"] == "s3cr3t-v@lue\n"
        # The values never reach the state store.
        assert record.claim_env == ["TASK_TOKEN"] and "s3cr3t" not in repr(record)

        # The pool refills behind the claim; claims take the pool's configuration.
        for _ in range(100):
            view = (await raw.get("/v1/pools/rollouts", headers=auth)).json()
            if view["ready"] == 2 and view["claimed"] == 1:
                break
            await asyncio.sleep(0.05)
        assert (view["ready"], view["claimed"]) == (2, 1)
        other = await raw.post("/v1/sandboxes", json={"from_pool": "rollouts", "image": "other:1"}, headers=auth)
        assert (other.status_code, other.json()["code"]) == (400, "bad_request")
        with_session = {"from_pool": "rollouts", "session": {"session_id": "s", "control_plane_url": "http://x/",
                        "sandbox_auth_token": "t"}}  # fmt: skip
        assert (await raw.post("/v1/sandboxes", json=with_session, headers=auth)).status_code == 400

        # An empty pool falls back to a cold create with the pool's configuration.
        await raw.put("/v1/pools/rollouts", json={**body, "target": 0}, headers=auth)
        await services.pools.maintainer.maintain()
        cold = await raw.post("/v1/sandboxes", json={"from_pool": "rollouts", "env": {"X": "1"}}, headers=auth)
        assert cold.status_code == 201, cold.text
        cold_record = await services.sandboxes.get(cold.json()["id"])
        assert cold_record.key not in members and cold_record.labels["tier"] == "rl"
        assert (await client.exec(cold_record.id, ["sh", "-c", 'echo "$X$POOL_LEVEL"']))["stdout"] == "1p\n"
        await raw.delete("/v1/pools/rollouts", headers=auth)
        assert (await raw.delete("/v1/sandboxes/rollout-1", headers=auth)).status_code == 200


async def test_plain_claim_on_bubblewrap(make_settings: Any, provider_workdir: Path) -> None:
    """On a real sandbox the claim's env file is private (0600) and every exec and shell reads it."""
    if shutil.which("bwrap") is None:
        missing_component("bubblewrap (bwrap) is not installed")
    settings = make_settings(provider="local", data_dir=provider_workdir / "data")
    async with serve_in_process(settings) as (app, raw, client):
        auth = {"Authorization": f"Bearer {make_token(settings.resolved_secrets()[0])}"}
        put = await raw.put("/v1/pools/plain", json={"target": 1, "network": "none"}, headers=auth)
        assert put.status_code == 200, put.text
        for _ in range(200):
            if (await raw.get("/v1/pools/plain", headers=auth)).json()["ready"] == 1:
                break
            await asyncio.sleep(0.05)
        claim = {"from_pool": "plain", "sandbox_id": "task-1", "env": {"TASK_TOKEN": "it's $secret"}}
        claimed = await raw.post("/v1/sandboxes", json=claim, headers=auth)
        assert claimed.status_code == 201, claimed.text
        record = await app.state.services.sandboxes.get("task-1")
        assert record.claimed
        mode = await client.exec("task-1", ["stat", "-c", "%a", CLAIM_ENV_FILE])
        assert mode["stdout"] == "600\n"
        echoed = await client.exec("task-1", ["sh", "-c", 'printf %s "$TASK_TOKEN"'])
        assert echoed["stdout"] == "it's $secret"
        # The claim's values count as the sandbox's secrets: a snapshot holding one is refused.
        await client.exec("task-1", ["sh", "-c", 'printf %s "$TASK_TOKEN" > /workspace/leak.txt'])
        refused = await raw.post("/v1/sandboxes/task-1/snapshots", json={}, headers=auth)
        assert refused.status_code == 422, refused.text
        assert "$secret" not in refused.text
        await raw.put("/v1/pools/plain", json={"target": 0, "network": "none"}, headers=auth)
        await raw.delete("/v1/pools/plain", headers=auth)
        assert (await raw.delete("/v1/sandboxes/task-1", headers=auth)).status_code == 200


@pytest.mark.parametrize("origin", ["created", "claimed"])
async def test_a_claimed_sandbox_behaves_as_a_created_one(
    make_settings: Any, provider_workdir: Path, origin: str
) -> None:
    """The same checks on a sandbox created with env and labels and on one claimed from a plain pool with them."""
    if shutil.which("bwrap") is None:
        missing_component("bubblewrap (bwrap) is not installed")
    settings = make_settings(provider="local", data_dir=provider_workdir / "data")
    async with serve_in_process(settings) as (_app, raw, client):
        auth = {"Authorization": f"Bearer {make_token(settings.resolved_secrets()[0])}"}
        wanted = {"sandbox_id": "box", "env": {"API_TOKEN": "v@lue-123456"}, "labels": {"run": "9"}}
        if origin == "claimed":
            await raw.put("/v1/pools/p", json={"target": 1, "env": {"BASE": "b"}, "network": "none"}, headers=auth)
            for _ in range(200):
                if (await raw.get("/v1/pools/p", headers=auth)).json()["ready"] == 1:
                    break
                await asyncio.sleep(0.05)
            answer = await raw.post("/v1/sandboxes", json={"from_pool": "p", **wanted}, headers=auth)
            await raw.put("/v1/pools/p", json={"target": 0, "network": "none"}, headers=auth)
        else:
            body = {**wanted, "env": {"BASE": "b", **wanted["env"]}, "network": "none"}
            answer = await raw.post("/v1/sandboxes", json=body, headers=auth)
        assert answer.status_code == 201, answer.text
        view = answer.json()
        assert (view["id"], view["status"], view["labels"]["run"]) == ("box", "running", "9")

        env = 'printf "%s|%s" "$BASE" "$API_TOKEN"'
        assert (await client.exec("box", ["sh", "-c", env]))["stdout"] == "b|v@lue-123456"
        assert (await client.exec("box", env))["stdout"] == "b|v@lue-123456"
        assert (await client.exec("box", ["sh", "-c", "exit 3"]))["exit_code"] == 3
        assert (await client.exec("box", env, env={"API_TOKEN": "override-1"}))["stdout"] == "b|override-1"
        put = await raw.put("/v1/sandboxes/box/files", params={"path": "data.txt"}, content=b"kept", headers=auth)
        assert put.status_code in (200, 201, 204), put.text
        assert (await raw.post("/v1/sandboxes/box/stop", headers=auth)).status_code == 200
        stopped = await raw.post("/v1/sandboxes/box/exec", json={"command": "true"}, headers=auth)
        assert stopped.json()["code"] == "sandbox_not_running"
        assert (await raw.post("/v1/sandboxes/box/start", headers=auth)).status_code == 200
        assert (await client.exec("box", env))["stdout"] == "b|v@lue-123456"  # env survives a restart
        got = await raw.get("/v1/sandboxes/box/files", params={"path": "data.txt"}, headers=auth)
        assert got.content == b"kept"
        listed = (await raw.get("/v1/sandboxes", params={"label": "run=9"}, headers=auth)).json()["sandboxes"]
        assert [s["id"] for s in listed] == ["box"]
        assert (await raw.delete("/v1/sandboxes/box", headers=auth)).status_code == 200
        assert (await raw.get("/v1/sandboxes/box", headers=auth)).status_code == 404
