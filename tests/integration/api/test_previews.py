"""Preview URLs on the fake provider (its sandboxes share the host's network): the API and the proxy's rules.

The dev server (``tests/fixtures/preview_upstream.py``) runs on the host, as a
fake sandbox's process would, and echoes what reached it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from app.client import ApiError, SandboxClient
from app.services.previews.tokens import PreviewSigner
from app.settings import Settings
from tests.fixtures.app import free_port, serve_in_process
from tests.fixtures.preview_upstream import __file__ as UPSTREAM_SCRIPT

Service = tuple[Any, httpx.AsyncClient, SandboxClient]
DOMAIN = "preview.test"


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, UPSTREAM_SCRIPT, str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the preview upstream did not start")


@pytest.fixture
def upstream_port() -> Iterator[int]:
    port = free_port()
    process = start_upstream(port)
    yield port
    process.kill()
    process.wait(10)


@pytest.fixture
async def service(make_settings: Callable[..., Settings]) -> AsyncIterator[Service]:
    settings = make_settings(preview_domain=DOMAIN, public_url="https://sandboxes.example")
    async with serve_in_process(settings) as triple:
        yield triple


async def test_create_list_and_revoke(service: Service, upstream_port: int) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], upstream_port, expires_in_seconds=600)
    assert preview["id"].startswith("pv") and preview["port"] == upstream_port
    assert preview["url"] == f"https://sandboxes.example/p/{preview['token']}/"
    assert preview["host_url"] == (
        f"https://{upstream_port}-{preview['id']}.{DOMAIN}/?preview_token={preview['token']}"
    )
    assert [p["id"] for p in await client.list_previews(sandbox["id"])] == [preview["id"]]

    answer = await raw.get(f"/p/{preview['token']}/")
    assert answer.status_code == 200 and answer.text == "hello from the sandbox\n"

    await client.revoke_preview(sandbox["id"], preview["id"])
    assert await client.list_previews(sandbox["id"]) == []
    gone = await raw.get(f"/p/{preview['token']}/")
    assert (gone.status_code, gone.json()["code"]) == (404, "preview_not_found")
    with pytest.raises(ApiError) as again:
        await client.revoke_preview(sandbox["id"], preview["id"])
    assert again.value.code == "preview_not_found"


async def test_bad_requests_are_clear_4xx(service: Service, upstream_port: int) -> None:
    _, _, client = service
    sandbox = await client.create()
    for bad in (0, 65536, -1, "x"):
        with pytest.raises(ApiError) as invalid:
            await client.create_preview(sandbox["id"], bad)  # type: ignore[arg-type]
        assert (invalid.value.status, invalid.value.code) == (422, "validation_error")
    with pytest.raises(ApiError) as extra:
        await client.create_preview(sandbox["id"], 80, colour="red")
    assert extra.value.code == "validation_error"
    with pytest.raises(ApiError) as missing:
        await client.create_preview("sbx_nope", 80)
    assert (missing.value.status, missing.value.code) == (404, "sandbox_not_found")
    with pytest.raises(ApiError) as bad_id:
        await client.revoke_preview(sandbox["id"], "nope")
    assert bad_id.value.status == 422
    await client.stop(sandbox["id"])
    with pytest.raises(ApiError) as stopped:
        await client.create_preview(sandbox["id"], upstream_port)
    assert (stopped.value.status, stopped.value.code) == (409, "sandbox_not_running")


async def test_the_api_needs_its_own_auth(service: Service) -> None:
    _, raw, client = service
    sandbox = await client.create()
    answer = await raw.post(f"/v1/sandboxes/{sandbox['id']}/previews", json={"port": 80})
    assert answer.status_code == 401


async def test_previews_die_with_their_sandbox(service: Service, upstream_port: int) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], upstream_port)
    await client.stop(sandbox["id"])
    await client.start(sandbox["id"])  # a restart does not bring it back
    answer = await raw.get(f"/p/{preview['token']}/")
    assert (answer.status_code, answer.json()["code"]) == (404, "preview_not_found")
    assert await client.list_previews(sandbox["id"]) == []

    other = await client.create()
    second = await client.create_preview(other["id"], upstream_port)
    await client.delete(other["id"])
    answer = await raw.get(f"/p/{second['token']}/")
    assert answer.status_code == 404


async def test_expiry_is_capped_and_enforced(make_settings: Callable[..., Settings], upstream_port: int) -> None:
    settings = make_settings(preview_max_ttl_seconds=60, preview_default_ttl_seconds=60)
    async with serve_in_process(settings) as (_, raw, client):
        sandbox = await client.create()
        preview = await client.create_preview(sandbox["id"], upstream_port, expires_in_seconds=10**6)
        lifetime = datetime.fromisoformat(preview["expires_at"]) - datetime.fromisoformat(preview["created_at"])
        assert lifetime == timedelta(seconds=60)  # capped at SANDBOX_PREVIEW_MAX_TTL
        # An expired token (signed correctly, for the preview's own row) is refused as expired.
        service_app = raw._transport.app  # type: ignore[attr-defined]
        signer: PreviewSigner = service_app.state.services.previews.signer
        old = signer.token(preview["id"], sandbox["id"], upstream_port, int(time.time()) - 5)
        answer = await raw.get(f"/p/{old}/")
        assert (answer.status_code, answer.json()["code"]) == (401, "preview_token_expired")


async def test_tampered_and_foreign_tokens_are_refused(service: Service, upstream_port: int) -> None:
    app, raw, client = service
    first, second = await client.create(), await client.create()
    mine = await client.create_preview(first["id"], upstream_port)
    theirs = await client.create_preview(second["id"], upstream_port)
    other_port = await client.create_preview(first["id"], upstream_port + 1 if upstream_port < 65535 else 1)

    token = mine["token"]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (await raw.get(f"/p/{token}/")).status_code == 200  # its signature is now remembered
    for bad, status, code in (
        (tampered, 401, "preview_token_invalid"),
        ("garbage", 401, "preview_token_invalid"),
        (token.replace(mine["id"], theirs["id"]), 401, "preview_token_invalid"),  # another row's claims
    ):
        answer = await raw.get(f"/p/{bad}/")
        assert (answer.status_code, answer.json()["code"]) == (status, code), bad
    # A token re-signed with the API secret itself (not the derived key) is worthless.
    api_secret = app.state.services.settings.resolved_secrets()[0]
    forged = PreviewSigner([b"x" * 32]).token(mine["id"], first["id"], upstream_port, int(time.time()) + 60)
    assert (await raw.get(f"/p/{forged}/")).status_code == 401
    assert api_secret.decode() not in token

    # Host form: the host names the preview; a token of another sandbox or port is a 403.
    host = f"{upstream_port}-{mine['id']}.{DOMAIN}"
    for foreign in (theirs["token"], other_port["token"]):
        answer = await raw.get("/", headers={"Host": host, "X-Preview-Token": foreign})
        assert (answer.status_code, answer.json()["code"]) == (403, "preview_token_mismatch")
    wrong_port = f"{upstream_port + 1}-{mine['id']}.{DOMAIN}"
    answer = await raw.get("/", headers={"Host": wrong_port, "X-Preview-Token": token})
    assert (answer.status_code, answer.json()["code"]) == (403, "preview_token_mismatch")
    assert (await raw.get("/", headers={"Host": host})).json()["code"] == "preview_token_invalid"
    assert (await raw.get("/healthz", headers={"Host": f"api.{DOMAIN}"})).status_code == 404
    ok = await raw.get("/", headers={"Host": host, "X-Preview-Token": token})
    assert ok.status_code == 200


async def test_host_form_cookie_flow(service: Service, upstream_port: int) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], upstream_port)
    host = f"{upstream_port}-{preview['id']}.{DOMAIN}"
    first = await raw.get(f"/echo?a=1&preview_token={preview['token']}", headers={"Host": host})
    assert first.status_code == 302 and first.headers["location"] == "/echo?a=1"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"sandbox_preview={preview['token']};")
    for attribute in ("HttpOnly", "SameSite=Lax", "Secure", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie  # host-only: one preview's host
    answer = await raw.get(
        "/echo?a=1", headers={"Host": host, "Cookie": f"theme=dark; sandbox_preview={preview['token']}"}
    )
    received = answer.json()
    assert received["path"] == "/echo?a=1"
    headers = {k.lower(): v for k, v in received["headers"]}
    assert headers["cookie"] == "theme=dark"  # the app's own cookies pass, the preview's does not


async def test_public_preview_needs_no_token_on_its_host(service: Service, upstream_port: int) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], upstream_port, public=True)
    host = f"{upstream_port}-{preview['id']}.{DOMAIN}"
    assert (await raw.get("/", headers={"Host": host})).status_code == 200


async def test_what_reaches_the_sandbox(service: Service, upstream_port: int) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], upstream_port)
    base = f"/p/{preview['token']}"
    answer = await raw.get(
        f"{base}/echo?x=1",
        headers={
            "Host": "169.254.169.254",
            "X-Preview-Token": preview["token"],
            "Connection": "close, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eA==",
            "X-Forwarded-For": "6.6.6.6",
            "Origin": "https://evil.example",
        },
    )
    assert answer.status_code == 200
    received = answer.json()
    headers = {k.lower(): v for k, v in received["headers"]}
    assert received["path"] == "/echo?x=1"
    assert headers["host"] == f"127.0.0.1:{upstream_port}"  # the provider's address, whatever Host said
    for stripped in ("x-preview-token", "x-secret-hop", "keep-alive", "proxy-authorization"):
        assert stripped not in headers
    assert headers["x-forwarded-for"] != "6.6.6.6"
    assert preview["token"] not in answer.text
    assert "access-control-allow-origin" not in answer.headers

    redirect = await raw.get(f"{base}/redirect")
    assert redirect.status_code == 302 and redirect.headers["location"] == "http://127.0.0.1:1/elsewhere"
    bare = await raw.get(base)
    assert bare.status_code == 308 and bare.headers["location"] == f"{base}/"
    posted = await raw.post(f"{base}/echo", content=b"payload")
    assert posted.json()["body"] == "payload"


async def test_smuggling_is_refused(service: Service, upstream_port: int) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], upstream_port)
    both = await raw.post(
        f"/p/{preview['token']}/upload",
        content=b"0\r\n\r\n",
        headers={"Content-Length": "5", "Transfer-Encoding": "chunked"},
    )
    assert (both.status_code, both.json()["code"]) == (400, "bad_request")
    odd = await raw.post(f"/p/{preview['token']}/upload", content=b"x", headers={"Transfer-Encoding": "gzip, chunked"})
    assert odd.status_code == 400


async def test_nothing_listening_is_a_502(service: Service) -> None:
    _, raw, client = service
    sandbox = await client.create()
    preview = await client.create_preview(sandbox["id"], free_port())
    answer = await raw.get(f"/p/{preview['token']}/")
    assert (answer.status_code, answer.json()["code"]) == (502, "preview_upstream_unreachable")
    await asyncio.sleep(0)


async def test_bodies_past_the_upload_limit_are_413(make_settings: Callable[..., Settings], upstream_port: int) -> None:
    async with serve_in_process(make_settings(max_upload_bytes=4096)) as (_, raw, client):
        sandbox = await client.create()
        preview = await client.create_preview(sandbox["id"], upstream_port)

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1024

        streamed = await raw.post(f"/p/{preview['token']}/upload", content=chunked())
        assert (streamed.status_code, streamed.json()["code"]) == (413, "payload_too_large")
        declared = await raw.post(f"/p/{preview['token']}/upload", content=b"x" * 5000)
        assert declared.status_code == 413
        small = await raw.post(f"/p/{preview['token']}/upload", content=b"x" * 100)
        assert small.json()["size"] == 100


async def test_a_restarted_dev_server_is_reached_again(service: Service) -> None:
    """Pooled keep-alive connections to a server that went away are dropped, not reused (no 502)."""
    _, raw, client = service
    port = free_port()
    first = start_upstream(port)
    try:
        sandbox = await client.create()
        preview = await client.create_preview(sandbox["id"], port)
        assert (await raw.get(f"/p/{preview['token']}/")).status_code == 200
    finally:
        first.kill()
        first.wait(10)
    second = start_upstream(port)
    try:
        await asyncio.sleep(0.1)
        assert (await raw.get(f"/p/{preview['token']}/")).status_code == 200
    finally:
        second.kill()
        second.wait(10)
