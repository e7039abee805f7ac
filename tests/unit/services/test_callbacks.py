"""Callback outbox rules: URLs, outcomes, backoff, configuration and the signed request."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from app.auth import RequestVerifier
from app.errors import BadRequest
from app.services.callbacks import CallbackOutbox, CallbackPolicy, classify, failure_url
from app.settings import ConfigError, Settings
from app.storage.state import StateStore

SECRET = secrets.token_hex(32)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cp.example.com/builds/b1/build-complete", "https://cp.example.com/builds/b1/build-failed"),
        ("https://cp.example.com/cb/done?sig=a%2Fb&x=1", "https://cp.example.com/cb/build-failed?sig=a%2Fb&x=1"),
        ("https://cp.example.com:8443/done#frag", "https://cp.example.com:8443/build-failed"),
        ("https://cp.example.com/b/1/", "https://cp.example.com/b/1/build-failed"),
        ("https://cp.example.com", "https://cp.example.com/build-failed"),
        ("https://cp.example.com/?q=1", "https://cp.example.com/build-failed?q=1"),
        ("http://127.0.0.1:8787/build-failed", "http://127.0.0.1:8787/build-failed"),
    ],
)
def test_failure_url(url: str, expected: str) -> None:
    assert failure_url(url) == expected


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (301, "give_up"),
        (400, "give_up"),
        (404, "give_up"),
        (409, "give_up"),
        (422, "give_up"),
        (401, "retry"),
        (403, "retry"),
        (408, "retry"),
        (425, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_classify(status: int, outcome: str) -> None:
    assert classify(status) == outcome


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = CallbackPolicy(base_seconds=1, cap_seconds=10)
    for attempts, full in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (500, 10)]:
        for _ in range(50):
            assert full * 0.5 <= policy.backoff(attempts) <= full


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_seconds": 0},
        {"base_seconds": 10, "cap_seconds": 1},
        {"lease_seconds": 10, "request_timeout_seconds": 10},
        {"batch_size": 0},
        {"poll_interval_seconds": 0},
    ],
)
def test_policy_refuses_unsafe_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CallbackPolicy(**kwargs)  # type: ignore[arg-type]


def _settings(tmp_path: Path, secret: str | None = SECRET) -> Settings:
    return Settings.load(
        data_dir=tmp_path,
        internal_callback_secret=SecretStr(secret) if secret is not None else None,
        allowed_control_plane_hosts=["cp.example.com"],
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    yield store
    await store.aclose()


@pytest.mark.parametrize("secret", [None, "short-secret"])
async def test_refuses_to_start_without_a_usable_secret(tmp_path: Path, store: StateStore, secret: str | None) -> None:
    outbox = CallbackOutbox(_settings(tmp_path, secret), store.callbacks)
    with pytest.raises(ConfigError, match="INTERNAL_CALLBACK_SECRET"):
        outbox.validate()
    with pytest.raises(ConfigError):
        outbox.start()
    with pytest.raises(ConfigError):
        await outbox.deliver_due()
    await outbox.aclose()
    CallbackOutbox(_settings(tmp_path), store.callbacks).validate()


async def test_enqueue_and_list_refuse_bad_arguments(tmp_path: Path, store: StateStore) -> None:
    outbox = CallbackOutbox(_settings(tmp_path), store.callbacks)
    with pytest.raises(BadRequest):
        await outbox.enqueue("https://cp.example.com/cb", {}, kind="build_failed", idempotency_key="")
    with pytest.raises(BadRequest):
        await outbox.enqueue("https://cp.example.com/cb", {}, kind="build_failed", idempotency_key="k\r\nX-Evil: 1")
    with pytest.raises(BadRequest):
        await outbox.enqueue("https://cp.example.com/cb", {}, kind="", idempotency_key="k")
    with pytest.raises(BadRequest):
        await outbox.list(status="lost")
    assert await outbox.list() == []


async def test_signed_request_and_retry_after(tmp_path: Path, store: StateStore) -> None:
    seen: list[httpx.Request] = []
    verifier = RequestVerifier([SECRET.encode()], skew_seconds=300, mode="signed")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        verifier.check_bearer(request.headers["authorization"])
        verifier.check_signature_header(
            request.headers["x-sandbox-signature"],
            request.method,
            request.url.raw_path.decode(),
            hashlib.sha256(request.content).hexdigest(),
        )
        return httpx.Response(429, headers={"Retry-After": "120"}, text="slow down")

    policy = CallbackPolicy(base_seconds=0.01, cap_seconds=600)
    outbox = CallbackOutbox(
        _settings(tmp_path),
        store.callbacks,
        lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        policy=policy,
    )
    payload = {"build_id": "b1", "error": "clone failed: ü"}
    record = await outbox.enqueue(
        "https://cp.example.com/builds/b1/build-failed?t=1", payload, kind="build_failed", idempotency_key="b1:failed"
    )
    try:
        assert await outbox.deliver_due() == 0
    finally:
        await outbox.aclose()

    [request] = seen
    assert request.method == "POST"
    assert request.url.raw_path == b"/builds/b1/build-failed?t=1"
    assert request.headers["idempotency-key"] == "b1:failed"
    assert request.headers["content-type"] == "application/json"
    assert request.content == record.body.encode()
    assert json.loads(request.content) == payload
    # Documented header form: t=<ms>,v1=<hex>, no extensions.
    assert request.headers["x-sandbox-signature"].startswith("t=")
    assert ",v1=" in request.headers["x-sandbox-signature"] and ",n=" not in request.headers["x-sandbox-signature"]

    got = await outbox.get(record.id)
    assert got is not None and got.status == "pending" and got.last_status == 429
    assert got.last_error == "HTTP 429: slow down"
    assert got.next_attempt_at >= got.updated_at + timedelta(seconds=119)
