"""The /v1 sandbox API: lifecycle, exec, files, and every kind of bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.auth import make_token
from app.client import ApiError, SandboxClient
from app.settings import Settings
from tests.fixtures.app import serve_in_process

Service = tuple[Any, httpx.AsyncClient, SandboxClient]


@pytest.fixture
def auth(api_secret: str) -> Callable[[], dict[str, str]]:
    return lambda: {"Authorization": f"Bearer {make_token(api_secret.encode())}"}


async def test_lifecycle(service: Service) -> None:
    _, _, client = service
    created = await client.create(labels={"task": "t1", "team": "a"}, env={"GREETING": "hi"}, ttl_seconds=600)
    assert created["status"] == "running"
    assert created["id"].startswith("sbx_")
    assert created["expires_at"] is not None
    assert created["labels"] == {"task": "t1", "team": "a"}
    by_provider_id = await client.get(created["provider_object_id"])
    assert by_provider_id["id"] == created["id"]
    await client.create(labels={"task": "t2"})
    assert [s["id"] for s in await client.list_sandboxes({"task": "t1"})] == [created["id"]]
    assert len(await client.list_sandboxes()) == 2
    assert await client.list_sandboxes({"task": "t1", "team": "b"}) == []

    result = await client.exec(created["id"], ["sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 3'])
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (3, "hi\n", "oops\n")
    shell = await client.exec(created["id"], "echo $((6 * 7))")
    assert shell["stdout"] == "42\n"

    await client.upload_stream(created["id"], "notes/a.txt", b"hello\x00world")
    chunks = [c async for c in client.download(created["id"], "/workspace/notes/a.txt")]
    assert b"".join(chunks) == b"hello\x00world"

    stopped = await client.stop(created["id"])
    assert stopped["status"] == "stopped"
    with pytest.raises(ApiError) as err:
        await client.exec(created["id"], ["true"])
    assert (err.value.status, err.value.code) == (409, "sandbox_not_running")
    assert (await client.start(created["id"]))["status"] == "running"
    chunks = [c async for c in client.download(created["id"], "notes/a.txt")]
    assert b"".join(chunks) == b"hello\x00world"

    deleted = await client.delete(created["id"])
    assert deleted["status"] == "deleted"
    with pytest.raises(ApiError) as err:
        await client.get(created["id"])
    assert (err.value.status, err.value.code) == (404, "sandbox_not_found")


async def test_exec_timeout_is_enforced(service: Service) -> None:
    _, _, client = service
    sandbox = await client.create()
    result = await client.exec(sandbox["id"], ["sleep", "30"], timeout_seconds=0.5)
    assert result["timed_out"] is True
    assert result["exit_code"] == 124


async def test_logical_id_and_duplicates(service: Service) -> None:
    _, _, client = service
    await client.create(sandbox_id="session-123")
    with pytest.raises(ApiError) as err:
        await client.create(sandbox_id="session-123")
    assert (err.value.status, err.value.code) == (409, "conflict")


async def test_the_id_of_a_deleted_sandbox_is_not_reused(service: Service) -> None:
    app, _, client = service
    first = await client.create(sandbox_id="task-7", labels={"run": "1"})
    await client.delete("task-7")
    with pytest.raises(ApiError) as err:
        await client.create(sandbox_id="task-7")
    assert (err.value.status, err.value.code) == (409, "conflict")
    assert "deleted" in err.value.message and "not reused" in err.value.message
    # The deleted record still names the first sandbox (its snapshots and events stay unambiguous).
    record = await app.state.services.store.sandboxes.get("task-7", include_deleted=True)
    assert record.status == "deleted" and record.provider_object_id == first["provider_object_id"]
    assert await app.state.services.provider.list({}) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"unknown_field": 1}, 422, "validation_error"),
        ({"labels": "not-a-dict"}, 422, "validation_error"),
        ({"labels": {"bad key!": "v"}}, 422, "validation_error"),
        ({"labels": {"sandbox-control.id": "x"}}, 422, "validation_error"),
        ({"labels": {"k": "v" * 300}}, 422, "validation_error"),
        ({"env": {"1BAD": "x"}}, 422, "validation_error"),
        ({"ttl_seconds": -5}, 422, "validation_error"),
        ({"ttl_seconds": 10**9}, 400, "bad_request"),
        ({"resources": {"gpu": "A100"}}, 422, "unsupported_spec"),
        ({"resources": {"memory_mb": -1}}, 422, "validation_error"),
        ({"network": "corp-net"}, 422, "unsupported_spec"),
        ({"sandbox_id": "../etc"}, 422, "validation_error"),
        ({"command": []}, 422, "validation_error"),
    ],
)
async def test_bad_create_requests(
    service: Service, auth: Callable[[], dict[str, str]], body: dict[str, Any], status: int, code: str
) -> None:
    _, raw, _ = service
    response = await raw.post("/v1/sandboxes", json=body, headers=auth())
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["success"] is False
    assert payload["code"] == code
    assert payload["error"]
    assert "Traceback" not in response.text


async def test_unsupported_spec_names_field_and_provider(service: Service, auth: Callable[[], dict[str, str]]) -> None:
    _, raw, _ = service
    response = await raw.post("/v1/sandboxes", json={"resources": {"gpu": "any"}}, headers=auth())
    assert "resources.gpu" in response.json()["error"]
    assert "fake" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"command": []}, 422),
        ({"command": [""]}, 422),
        ({"command": ["true"], "timeout_seconds": -1}, 422),
        ({"command": ["true"], "timeout_seconds": 0}, 422),
        ({"command": ["true"], "timeout_seconds": 10**7}, 400),
        ({"command": ["true"], "cwd": "../../etc"}, 400),
        ({"command": ["true"], "env": {"A B": "x"}}, 422),
        ({"command": 42}, 422),
        ({"command": ["true"], "extra": True}, 422),
    ],
)
async def test_bad_exec_requests(
    service: Service, auth: Callable[[], dict[str, str]], body: dict[str, Any], status: int
) -> None:
    _, raw, client = service
    sandbox = await client.create()
    response = await raw.post(f"/v1/sandboxes/{sandbox['id']}/exec", json=body, headers=auth())
    assert response.status_code == status, response.text
    assert response.json()["code"]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/workspace/../../etc/shadow", "a/../../b", "", "x\x00y"])
async def test_file_paths_with_escapes_are_refused(
    service: Service, auth: Callable[[], dict[str, str]], path: str
) -> None:
    _, raw, client = service
    sandbox = await client.create()
    for method in ("GET", "PUT"):
        response = await raw.request(
            method, f"/v1/sandboxes/{sandbox['id']}/files", params={"path": path}, content=b"x", headers=auth()
        )
        assert response.status_code in (400, 422), (method, path, response.text)
        assert response.json()["code"] in ("bad_request", "validation_error")


async def test_unknown_sandbox_is_404_everywhere(service: Service, auth: Callable[[], dict[str, str]]) -> None:
    _, raw, _ = service
    for method, suffix, body in [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/exec", {"command": ["true"]}),
        ("POST", "/stop", None),
        ("POST", "/start", None),
        ("GET", "/files?path=/workspace/x", None),
    ]:
        response = await raw.request(method, f"/v1/sandboxes/nope{suffix}", json=body, headers=auth())
        assert response.status_code == 404, (method, suffix)
        assert response.json()["code"] == "sandbox_not_found"


async def test_missing_file_is_404(service: Service) -> None:
    _, _, client = service
    sandbox = await client.create()
    with pytest.raises(ApiError) as err:
        async for _ in client.download(sandbox["id"], "/workspace/missing.txt"):
            pass
    assert (err.value.status, err.value.code) == (404, "file_not_found")


async def test_oversized_bodies_are_413(make_settings: Callable[..., Settings], api_secret: str) -> None:
    settings = make_settings(max_json_body_bytes=2048, max_upload_bytes=4096)
    async with serve_in_process(settings) as (_, raw, client):
        headers = {"Authorization": f"Bearer {make_token(api_secret.encode())}"}
        big = {"labels": {f"k{i}": "v" * 200 for i in range(20)}}
        response = await raw.post("/v1/sandboxes", json=big, headers=headers)
        assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")
        sandbox = await client.create()
        upload = await raw.put(
            f"/v1/sandboxes/{sandbox['id']}/files", params={"path": "f"}, content=b"x" * 5000, headers=headers
        )
        assert (upload.status_code, upload.json()["code"]) == (413, "payload_too_large")

        async def chunked() -> Any:
            for _ in range(10):
                yield b"y" * 1000

        streamed = await raw.put(
            f"/v1/sandboxes/{sandbox['id']}/files", params={"path": "g"}, content=chunked(), headers=headers
        )
        assert (streamed.status_code, streamed.json()["code"]) == (413, "payload_too_large")
        missing = await raw.get(f"/v1/sandboxes/{sandbox['id']}/files", params={"path": "g"}, headers=headers)
        assert missing.status_code == 404

        async def chunked_json() -> Any:  # a JSON body without Content-Length, over the limit
            yield b'{"labels": {'
            for i in range(20):
                yield f'"k{i}": "{"v" * 200}", '.encode()
            yield b'"end": "x"}}'

        chunked_create = await raw.post(
            "/v1/sandboxes", content=chunked_json(), headers={**headers, "Content-Type": "application/json"}
        )
        assert (chunked_create.status_code, chunked_create.json()["code"]) == (413, "payload_too_large")


async def test_exec_stdin_up_to_its_limit_fits_the_body_limit(service: Service) -> None:
    _, _, client = service
    sandbox = await client.create()
    stdin = "\x01" * (1 << 20) + "text\n" * (1 << 20)  # 6 MiB of text, 1 MiB of it sent as \u0001 escapes
    result = await client.exec(sandbox["id"], ["wc", "-c"], stdin=stdin)
    assert (result["exit_code"], result["stdout"].strip()) == (0, str(len(stdin.encode())))
    with pytest.raises(ApiError) as err:
        await client.exec(sandbox["id"], ["true"], stdin="x" * (8 * 1024 * 1024 + 1))
    assert (err.value.status, err.value.code) == (422, "validation_error")
    assert "stdin" in err.value.message


async def test_bad_label_filter(service: Service, auth: Callable[[], dict[str, str]]) -> None:
    _, raw, _ = service
    response = await raw.get("/v1/sandboxes", params={"label": "novalue"}, headers=auth())
    assert (response.status_code, response.json()["code"]) == (400, "bad_request")


async def test_unknown_route_and_method_use_the_envelope(service: Service, auth: Callable[[], dict[str, str]]) -> None:
    _, raw, _ = service
    response = await raw.get("/v1/nothing-here", headers=auth())
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    response = await raw.patch("/v1/sandboxes", headers=auth())
    assert (response.status_code, response.json()["code"]) == (405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD, POST"
    # Every method of the path, not only those of the first route that matched it.
    response = await raw.patch("/v1/sandboxes/some-id", headers=auth())
    assert (response.status_code, response.headers["allow"]) == (405, "DELETE, GET, HEAD")


async def test_unexpected_error_is_a_clean_500(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _, client = service
    sandbox = await client.create()

    async def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.services.provider.inner, "exec", boom)
    with pytest.raises(ApiError) as err:
        await client.exec(sandbox["id"], ["true"])
    assert (err.value.status, err.value.code) == (500, "internal")
    assert "secret internals" not in err.value.message


async def test_provider_failure_during_create_leaves_nothing(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _, client = service
    provider = app.state.services.provider.inner
    original = provider.create

    async def create_then_fail(spec: Any) -> Any:
        await original(spec)
        raise ConnectionError("engine went away")

    monkeypatch.setattr(provider, "create", create_then_fail)
    with pytest.raises(ApiError):
        await client.create(sandbox_id="doomed")
    assert await provider.list({"sandbox-control.id": "doomed"}) == []
    assert await client.list_sandboxes() == []


async def test_metrics_count_requests_and_sandboxes(service: Service, auth: Callable[[], dict[str, str]]) -> None:
    _, raw, client = service
    await client.create()
    text = (await raw.get("/metrics")).text
    assert 'sandbox_http_requests_total{method="POST",route="/v1/sandboxes",status="201"}' in text
    assert 'sandbox_sandboxes{status="running"} 1.0' in text
    assert 'sandbox_provider_call_duration_seconds_count{operation="create",outcome="ok",provider="fake"}' in text


async def test_request_id_is_echoed(service: Service) -> None:
    _, raw, _ = service
    response = await raw.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len((await raw.get("/healthz")).headers["x-request-id"]) == 16


async def test_ttl_reaper_deletes_expired(service: Service) -> None:
    app, _, client = service
    sandbox = await client.create(ttl_seconds=1)
    services = app.state.services
    from datetime import timedelta

    from app.storage.state.times import utcnow

    await services.store.sandboxes.update(sandbox["id"], expires_at=utcnow() - timedelta(seconds=1))
    assert await services.reconciler.reap_expired() == 1
    with pytest.raises(ApiError):
        await client.get(sandbox["id"])
    events = [e["kind"] for e in await services.store.sandboxes.list_events(sandbox["id"])]
    assert events[-2:] == ["deleted", "reaped"]


async def test_fifty_concurrent_creates_and_deletes(service: Service) -> None:
    """SQLite under concurrent writers: every request succeeds (no "database is locked")."""
    import asyncio

    _, _, client = service
    created = await asyncio.gather(*(client.create(labels={"burst": str(i)}) for i in range(50)))
    assert len({c["id"] for c in created}) == 50
    await asyncio.gather(*(client.delete(c["id"]) for c in created))
    assert await client.list_sandboxes() == []
