"""Authentication over HTTP: tokens, signatures, replay, and auth before parsing."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr

from app.auth import make_token, now_ms, sign_request
from app.settings import Settings
from tests.fixtures.app import serve_in_process

Service = tuple[Any, httpx.AsyncClient, Any]


def bearer(secret: str, at: int | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(secret.encode(), at)}"}


async def test_health_metrics_and_docs_need_no_auth(service: Service) -> None:
    _, raw, _ = service
    for path in ("/healthz", "/readyz", "/metrics", "/api/health", "/openapi.json"):
        assert (await raw.get(path)).status_code == 200, path


async def test_missing_credentials(service: Service) -> None:
    _, raw, _ = service
    response = await raw.get("/v1/sandboxes")
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "missing credentials", "code": "unauthorized"}


async def test_auth_runs_before_body_validation(service: Service) -> None:
    _, raw, _ = service
    response = await raw.post("/v1/sandboxes", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


async def test_valid_expired_future_and_wrong_tokens(service: Service, api_secret: str) -> None:
    _, raw, _ = service
    assert (await raw.get("/v1/sandboxes", headers=bearer(api_secret))).status_code == 200
    for headers in (
        bearer(api_secret, now_ms() - 301_000),
        bearer(api_secret, now_ms() + 301_000),
        bearer(secrets.token_hex(32)),
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Basic {make_token(api_secret.encode())}"},
    ):
        response = await raw.get("/v1/sandboxes", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"


async def test_rotated_secrets_both_verify(make_settings: Callable[..., Settings]) -> None:
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    settings = make_settings(api_secrets=[SecretStr(new), SecretStr(old)])
    async with serve_in_process(settings) as (_, raw, _):
        for secret in (old, new):
            assert (await raw.get("/v1/sandboxes", headers=bearer(secret))).status_code == 200


async def test_signed_request_cannot_be_replayed_or_redirected(service: Service, api_secret: str) -> None:
    _, raw, _ = service
    body = json.dumps({"labels": {"a": "b"}}).encode()
    digest = hashlib.sha256(body).hexdigest()
    headers = {"X-Sandbox-Signature": sign_request(api_secret.encode(), "POST", "/v1/sandboxes", digest)}
    headers["Content-Type"] = "application/json"
    first = await raw.post("/v1/sandboxes", content=body, headers=headers)
    assert first.status_code == 201, first.text
    replay = await raw.post("/v1/sandboxes", content=body, headers=headers)
    assert replay.status_code == 401
    assert "replayed" in replay.json()["error"]
    other = {"X-Sandbox-Signature": sign_request(api_secret.encode(), "POST", "/v1/sandboxes", digest)}
    redirected = await raw.request("DELETE", f"/v1/sandboxes/{first.json()['id']}", headers=other)
    assert redirected.status_code == 401
    tampered = {"X-Sandbox-Signature": sign_request(api_secret.encode(), "POST", "/v1/sandboxes", digest)}
    changed = await raw.post("/v1/sandboxes", content=body.replace(b"b", b"c"), headers=tampered)
    assert changed.status_code == 401


async def test_signed_mode_refuses_plain_tokens(make_settings: Callable[..., Settings], api_secret: str) -> None:
    async with serve_in_process(make_settings(auth_mode="signed")) as (_, raw, client):
        response = await raw.get("/v1/sandboxes", headers=bearer(api_secret))
        assert response.status_code == 401
        assert "signed requests are required" in response.json()["error"]
        assert await client.list_sandboxes() == []


async def test_signed_upload_with_wrong_body_hash_is_refused(service: Service, api_secret: str) -> None:
    _, raw, client = service
    sandbox = await client.create()
    declared = hashlib.sha256(b"expected").hexdigest()
    path = f"/v1/sandboxes/{sandbox['id']}/files?path=/workspace/f.txt"
    headers = {
        "X-Sandbox-Signature": sign_request(api_secret.encode(), "PUT", path, declared),
        "X-Content-SHA256": declared,
    }
    response = await raw.put(path, content=b"something else", headers=headers)
    assert response.status_code == 401
    missing = await raw.get(path, headers=bearer(api_secret))
    assert missing.status_code == 404  # the partial upload was discarded
