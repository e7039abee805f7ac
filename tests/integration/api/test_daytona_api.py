"""The Daytona-compatible API over HTTP, in process on the fake provider: keys, error shapes, bad input.

Keys: only ``SANDBOX_DAYTONA_API_KEYS`` open ``/daytona/...``, and they open
nothing else. Every refusal has Daytona's error body (``statusCode``,
``message``, ``code``, ``source``), and bad input is a 4xx, never a 500.
(The real SDK against a real service: ``tests/e2e/test_daytona_sdk*.py``.)
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.auth import make_token
from app.settings import ConfigError, Settings
from tests.fixtures.app import serve_in_process

KEY = secrets.token_hex(32)
API = "/daytona/api"


@pytest.fixture
async def daytona_app(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[httpx.AsyncClient, str, Any]]:
    """A client sending the Daytona key, the service's API secret, and the app."""
    settings = make_settings(daytona_api_keys=[SecretStr(KEY)])
    async with serve_in_process(settings) as (app, raw, _client):
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=raw._transport, base_url="http://test", headers=headers) as keyed:
            yield keyed, settings.resolved_secrets()[0].decode(), app


@pytest.fixture
def daytona_http(daytona_app: tuple[httpx.AsyncClient, str, Any]) -> tuple[httpx.AsyncClient, str]:
    return daytona_app[0], daytona_app[1]


def _daytona_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == status and body["message"] and body["path"] == response.request.url.path
    return body


async def test_the_daytona_key_opens_only_the_daytona_api(daytona_http: tuple[httpx.AsyncClient, str]) -> None:
    raw, api_secret = daytona_http
    assert (await raw.get(f"{API}/sandbox")).json() == {"items": [], "nextCursor": None}
    for value in ("", "Bearer " + "x" * 64, KEY, f"Basic {KEY}"):
        refused = await raw.get(f"{API}/sandbox", headers={"Authorization": value})
        assert _daytona_error(refused, 401)["code"] == "UNAUTHORIZED"
    # Our HMAC tokens do not open the Daytona API, and its key does not open ours.
    ours = {"Authorization": f"Bearer {make_token(api_secret.encode())}"}
    assert (await raw.get(f"{API}/sandbox", headers=ours)).status_code == 401
    assert (await raw.get("/v1/sandboxes")).status_code == 401


async def test_closed_without_keys(make_settings: Callable[..., Settings]) -> None:
    async with serve_in_process(make_settings()) as (_app, raw, _client):
        refused = await raw.get(f"{API}/sandbox", headers={"Authorization": f"Bearer {KEY}"})
        assert _daytona_error(refused, 401)["source"] == "DAYTONA_API"


async def test_unknown_ids_and_operations_are_404s_naming_them(daytona_http: tuple[httpx.AsyncClient, str]) -> None:
    raw, _ = daytona_http
    missing = _daytona_error(await raw.get(f"{API}/sandbox/nope"), 404)
    assert "nope" in missing["message"] and missing["source"] == "DAYTONA_API"
    toolbox = _daytona_error(await raw.post("/daytona/toolbox/nope/process/execute", json={"command": "true"}), 404)
    assert toolbox["source"] == "DAYTONA_DAEMON"
    for method, path in (("GET", f"{API}/volumes"), ("POST", "/daytona/toolbox/x/computeruse/start")):
        body = _daytona_error(await raw.request(method, path), 404)
        assert f"operation {method} {path} is not supported" in body["message"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"cpu": "many"}, "cpu"),
        ({"volumes": [{"volumeId": "v", "mountPath": "/data"}]}, "volumes"),
        ({"kvm": True}, "kvm"),
        ({"name": "no spaces allowed"}, "name"),
        ({"labels": {"bad key": "x"}}, "labels"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"buildInfo": {"dockerfileContent": "FROM a\nRUN b"}}, "buildInfo"),
        ({"gpu": 1}, "gpu"),
        ({"user": "root"}, "user"),
    ],
)
async def test_bad_create_input_is_a_400_naming_the_field(
    daytona_http: tuple[httpx.AsyncClient, str], body: dict[str, Any], named: str
) -> None:
    raw, _ = daytona_http
    refused = _daytona_error(await raw.post(f"{API}/sandbox", json=body), 400)
    assert named in refused["message"], refused


async def test_malformed_requests_are_4xx(daytona_http: tuple[httpx.AsyncClient, str]) -> None:
    raw, _ = daytona_http
    not_json = await raw.post(f"{API}/sandbox", content=b"{", headers={"content-type": "application/json"})
    _daytona_error(not_json, 400)
    _daytona_error(await raw.get(f"{API}/sandbox", params={"labels": "[1]"}), 400)
    _daytona_error(await raw.get(f"{API}/sandbox", params={"limit": "0"}), 400)
    _daytona_error(await raw.post(f"{API}/snapshots", json={"name": "x", "imageName": "debian"}), 501)
    too_big = await raw.post(f"{API}/sandbox", content=b"x", headers={"content-length": str(10 << 30)})
    _daytona_error(too_big, 413)


async def test_bad_toolbox_input_is_a_400_never_a_500(daytona_http: tuple[httpx.AsyncClient, str]) -> None:
    raw, _ = daytona_http
    sandbox = (await raw.post(f"{API}/sandbox", json={})).json()["id"]
    toolbox = f"/daytona/toolbox/{sandbox}"
    assert (await raw.post(f"{toolbox}/process/session", json={"sessionId": "s"})).status_code == 201
    for method, path, body in (
        ("POST", "/process/execute", {"command": "echo \u0000"}),
        ("POST", "/process/execute", {"command": "true", "envs": {"1X": "y"}}),
        ("POST", "/process/execute", {"command": "true", "timeout": -1}),
        ("POST", "/process/code-run", {"code": "1", "language": "cobol"}),
        ("POST", "/process/session", {"sessionId": "../up"}),
        ("POST", "/process/session/s/exec", {"command": "a\u0000b"}),
        ("GET", "/process/session/..%2Fx", None),
        ("POST", "/git/clone", {"url": "a\u0000", "path": "/workspace/x"}),
        ("GET", "/files/info?path=/workspace/../etc", None),
        ("POST", "/files/folder?path=/workspace/d&mode=999", None),
        ("POST", "/files/bulk-upload", None),
    ):
        answer = await raw.request(method, toolbox + path, json=body)
        assert 400 <= answer.status_code < 500, (path, answer.text)
        assert answer.json()["source"] == "DAYTONA_DAEMON", (path, answer.text)


async def test_create_list_and_label_filter_on_the_fake_provider(daytona_http: tuple[httpx.AsyncClient, str]) -> None:
    raw, _ = daytona_http
    created = (await raw.post(f"{API}/sandbox", json={"labels": {"team": "a"}, "autoStopInterval": 0})).json()
    assert created["state"] == "started" and created["labels"] == {"team": "a"}
    assert created["autoStopInterval"] == 0 and created["autoDeleteInterval"] == -1
    assert created["toolboxProxyUrl"] == "http://test/daytona/toolbox"
    await raw.post(f"{API}/sandbox", json={"labels": {"team": "b"}})
    page = (await raw.get(f"{API}/sandbox", params={"labels": '{"team": "a"}'})).json()
    assert [s["id"] for s in page["items"]] == [created["id"]]
    relabeled = await raw.put(f"{API}/sandbox/{created['id']}/labels", json={"labels": {"team": "c"}})
    assert relabeled.json() == {"labels": {"team": "c"}}
    shown = (await raw.get(f"{API}/sandbox/{created['id']}")).json()
    assert shown["labels"] == {"team": "c"} and shown["autoStopInterval"] == 0, "reserved labels stay, hidden"
    url = (await raw.get(f"{API}/sandbox/{created['id']}/toolbox-proxy-url")).json()
    assert url == {"url": "http://test/daytona/toolbox"}


async def test_states_intervals_and_recover(daytona_app: tuple[httpx.AsyncClient, str, Any]) -> None:
    raw, _, app = daytona_app
    sandbox = (await raw.post(f"{API}/sandbox", json={"autoDeleteInterval": 30, "ttlMinutes": 600})).json()
    url = f"{API}/sandbox/{sandbox['id']}"
    assert (await raw.post(f"{url}/autostop/45")).json()["autoStopInterval"] == 45
    assert (await raw.post(f"{url}/autoarchive/60")).json()["autoArchiveInterval"] == 60
    assert (await raw.post(f"{url}/public/true")).json()["public"] is True
    _daytona_error(await raw.post(f"{url}/autostop/many"), 400)

    # A stop schedules the delete autoDeleteInterval later; a start puts the creation TTL back.
    stopped = (await raw.post(f"{url}/stop")).json()
    assert stopped["state"] == "stopped"
    delay = datetime.fromisoformat(stopped["autoDestroyAt"]) - datetime.now(UTC)
    assert timedelta(minutes=29) < delay <= timedelta(minutes=30)
    started = (await raw.post(f"{url}/start")).json()
    assert started["state"] == "started"
    assert datetime.fromisoformat(started["autoDestroyAt"]) - datetime.now(UTC) > timedelta(minutes=590)

    await app.state.services.store.sandboxes.update(sandbox["id"], status="failed", error="the node went away")
    failed = (await raw.get(url)).json()
    assert (failed["state"], failed["errorReason"], failed["recoverable"]) == ("error", "the node went away", False)
    assert "not recoverable" in _daytona_error(await raw.post(f"{url}/recover"), 400)["message"]
    assert (await raw.get(f"{API}/sandbox", params={"states": "error"})).json()["items"][0]["id"] == sandbox["id"]
    assert (await raw.get(f"{API}/sandbox", params={"states": "started"})).json()["items"] == []
    assert (await raw.delete(url)).json()["state"] == "destroyed"


async def test_reserved_prefix_labels_are_kept_apart(daytona_app: tuple[httpx.AsyncClient, str, Any]) -> None:
    """A caller's ``sandbox-control.*`` label (another instance's provider sets them) never poses as ours."""
    raw, _, app = daytona_app
    sandbox = (await raw.post(f"{API}/sandbox", json={"labels": {"sandbox-control.pool": "p", "a": "b"}})).json()
    assert sandbox["labels"] == {"sandbox-control.pool": "p", "a": "b"}
    record = await app.state.services.sandboxes.get(sandbox["id"])
    assert "sandbox-control.pool" not in record.labels
    assert record.labels["sandbox-control.daytona.u.pool"] == "p"
    found = await raw.get(f"{API}/sandbox", params={"labels": '{"sandbox-control.pool": "p"}'})
    assert [s["id"] for s in found.json()["items"]] == [sandbox["id"]]


async def test_exec_deadlines_default_and_cap(make_settings: Callable[..., Settings]) -> None:
    """No timeout: the service's default applies; one past the service's maximum is capped, not refused."""
    settings = make_settings(daytona_api_keys=[SecretStr(KEY)], exec_default_timeout=0.5, exec_max_timeout=1)
    async with serve_in_process(settings) as (_app, raw, _client):
        raw.headers["Authorization"] = f"Bearer {KEY}"
        sandbox = (await raw.post(f"{API}/sandbox", json={})).json()["id"]
        execute = f"/daytona/toolbox/{sandbox}/process/execute"
        for body in ({"command": "sleep 5"}, {"command": "sleep 5", "timeout": 100_000}):
            timed_out = _daytona_error(await raw.post(execute, json=body), 408)
            assert timed_out["code"] == "PROCESS_EXECUTION_TIMEOUT", timed_out
        assert (await raw.post(execute, json={"command": "echo ok", "timeout": 100_000})).json()["result"] == "ok\n"


def test_keys_are_checked_at_start(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="SANDBOX_DAYTONA_API_KEYS"):
        make_settings(daytona_api_keys=[SecretStr("short")])
    from app.main import create_app

    same = make_settings(daytona_api_keys=[SecretStr(KEY)], api_secrets=[SecretStr(KEY)])
    with pytest.raises(ConfigError, match="distinct"):
        create_app(same)
