"""``/v1/pools`` and ``/api/warm-sandbox`` request handling (fake provider, no members created)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from app.auth import make_token
from app.settings import Settings
from tests.fixtures.app import serve_in_process


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
        ({"from_pool": "web"}, 422),  # nothing to hand the sandbox to
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
