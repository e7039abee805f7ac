"""The callback outbox against a real HTTP receiver that verifies every signature.

The receiver is an ASGI app served by uvicorn on 127.0.0.1 inside the test's
event loop. It checks the bearer token and ``X-Sandbox-Signature`` with
``app.auth.RequestVerifier`` (signed mode, replay cache on), counts accepted
deliveries per ``Idempotency-Key`` and can be told to fail. Stores run on
SQLite and, where sharing a database between replicas matters, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import structlog
from pydantic import SecretStr

from app.errors import HostNotAllowed
from app.logging import MASK
from app.services.callbacks import CallbackOutbox, CallbackPolicy
from app.settings import Settings
from app.storage.state import StateStore
from app.storage.state.callbacks import CallbackRecord
from app.storage.state.times import utcnow
from tests.fixtures.app import free_port
from tests.fixtures.callbacks import WAIT_SECONDS, Receiver, serving, until

#: Tiny delays so retries happen within a test; the lease still outlasts a request.
FAST = CallbackPolicy(
    base_seconds=0.02, cap_seconds=0.1, poll_interval_seconds=0.2, lease_seconds=10, request_timeout_seconds=5
)


async def until_status(outbox: CallbackOutbox, record: CallbackRecord, status: str) -> CallbackRecord:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        current = await outbox.get(record.id)
        assert current is not None
        if current.status == status:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"callback stayed {current.status} ({current.last_error})")
        await asyncio.sleep(0.02)


class Clock:
    """A settable clock for tests in which time must pass."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def callback_secret() -> bytes:
    return secrets.token_hex(32).encode()


@pytest.fixture
def settings(tmp_path: Path, callback_secret: bytes) -> Settings:
    return Settings.load(
        data_dir=tmp_path / "data",
        internal_callback_secret=SecretStr(callback_secret.decode()),
        allowed_control_plane_hosts=["127.0.0.1"],
        callback_deadline_seconds=3600,
    )


@pytest.fixture
def receiver(callback_secret: bytes) -> Receiver:
    return Receiver(callback_secret)


@pytest.fixture
async def receiver_url(receiver: Receiver) -> AsyncIterator[str]:
    async with serving(receiver, free_port()) as url:
        yield url


async def _fresh_postgres_database(server_url: str) -> str:
    """A new database per test, so one test's pending rows never reach another's workers."""
    name = f"cb_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    return await _fresh_postgres_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"


OutboxFactory = Callable[..., Awaitable[CallbackOutbox]]


@pytest.fixture
async def make_outbox(settings: Settings) -> AsyncIterator[OutboxFactory]:
    """Outboxes with their own store (one per simulated replica), all closed at the end."""
    opened: list[tuple[CallbackOutbox, StateStore]] = []

    async def build(url: str, **kwargs: Any) -> CallbackOutbox:
        store = StateStore(url)
        await store.open()
        kwargs.setdefault("policy", FAST)
        outbox = CallbackOutbox(kwargs.pop("settings", settings), store.callbacks, **kwargs)
        opened.append((outbox, store))
        return outbox

    yield build
    for outbox, store in opened:
        await outbox.aclose()
        await store.aclose()


async def test_delivered_once_with_valid_signatures(
    make_outbox: OutboxFactory, db_url: str, receiver: Receiver, receiver_url: str
) -> None:
    outbox = await make_outbox(db_url)
    outbox.start()
    url = f"{receiver_url}/builds/b-1/build-complete?tenant=t1&x=a%2Fb"
    payload = {"build_id": "b-1", "provider_image_id": "img-1", "base_sha": "abc", "build_duration_seconds": 1.5}
    record = await outbox.enqueue(url, payload, kind="build_succeeded", idempotency_key="build:b-1:succeeded")
    assert record.status == "pending" and record.attempts == 0

    done = await until_status(outbox, record, "delivered")
    assert receiver.rejected == 0
    assert receiver.deliveries == Counter({"build:b-1:succeeded": 1})
    assert receiver.bodies["build:b-1:succeeded"] == payload
    assert receiver.paths == ["/builds/b-1/build-complete?tenant=t1&x=a%2Fb"]
    assert done.attempts == 1 and done.last_status == 200 and done.last_error is None
    assert done.delivered_at is not None and done.lease_owner is None
    assert [r.id for r in await outbox.list(status="delivered")] == [record.id]
    assert await outbox.list(status="pending") == []


async def test_retried_after_server_errors_until_delivered(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str, callback_secret: bytes
) -> None:
    receiver.fail_times = 3
    outbox = await make_outbox(sqlite_url)
    outbox.start()
    record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-retry")

    done = await until_status(outbox, record, "delivered")
    assert receiver.attempts["k-retry"] == 4
    assert receiver.deliveries["k-retry"] == 1
    assert done.attempts == 4 and done.last_status == 200
    # The receiver answered with our credentials in its 500 bodies; nothing of them was kept.
    history = json.dumps([done.last_error])
    assert callback_secret.decode() not in history


async def test_retry_state_is_recorded_without_credentials(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str, callback_secret: bytes
) -> None:
    receiver.fail_times = 1
    outbox = await make_outbox(sqlite_url, policy=CallbackPolicy(base_seconds=30, cap_seconds=60))
    record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-echo")
    assert await outbox.deliver_due() == 0

    pending = await outbox.get(record.id)
    assert pending is not None and pending.status == "pending"
    assert pending.attempts == 1 and pending.last_status == 500
    assert pending.last_error is not None and pending.last_error.startswith("HTTP 500: boom")
    assert callback_secret.decode() not in pending.last_error
    assert all(token not in pending.last_error for token in receiver.tokens)
    assert f"Bearer {MASK}" in pending.last_error and f"v1={MASK}" in pending.last_error
    # Backoff of at least half the base delay, so not due again yet.
    assert pending.next_attempt_at >= pending.updated_at + timedelta(seconds=14)
    assert await outbox.deliver_due() == 0
    assert receiver.attempts["k-echo"] == 1


async def test_callback_survives_a_restart(make_outbox: OutboxFactory, db_url: str, callback_secret: bytes) -> None:
    """Enqueued while the receiver is down, left undelivered by replica A, delivered by a new replica B."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = await make_outbox(db_url)
    first.start()
    tried = await first.enqueue(f"{base}/cb/1", {"n": 1}, kind="build_succeeded", idempotency_key="k-down-1")
    await until_status_attempted(first, tried)
    await first.aclose()
    # A second callback persisted by a replica that died before its worker ever ran.
    untried = await first.enqueue(f"{base}/cb/2", {"n": 2}, kind="build_failed", idempotency_key="k-down-2")

    seen = await first.get(tried.id)
    assert seen is not None and seen.status == "pending" and seen.last_error is not None
    assert "ConnectError" in seen.last_error

    receiver = Receiver(callback_secret)
    async with serving(receiver, port):
        second = await make_outbox(db_url)
        second.start()
        await until_status(second, tried, "delivered")
        await until_status(second, untried, "delivered")
    assert receiver.deliveries == Counter({"k-down-1": 1, "k-down-2": 1})


async def until_status_attempted(outbox: CallbackOutbox, record: CallbackRecord) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        current = await outbox.get(record.id)
        if current is not None and current.attempts >= 1 and current.lease_owner is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError("no delivery attempt was recorded")
        await asyncio.sleep(0.02)


async def test_lease_of_a_dead_worker_runs_out(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str
) -> None:
    clock = Clock()
    outbox = await make_outbox(sqlite_url, clock=clock)
    record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_succeeded", idempotency_key="k-lease")
    store = StateStore(sqlite_url)
    await store.open()
    try:
        # A worker claims the row and dies without answering for it.
        claimed = await store.callbacks.claim_due(
            now=clock(), lease_until=clock() + timedelta(seconds=30), owner="dead-worker", limit=10
        )
        assert [r.id for r in claimed] == [record.id]
    finally:
        await store.aclose()
    assert await outbox.deliver_due() == 0
    assert receiver.attempts["k-lease"] == 0
    clock.advance(31)
    assert await outbox.deliver_due() == 1
    assert receiver.deliveries["k-lease"] == 1
    done = await outbox.get(record.id)
    assert done is not None and done.attempts == 2


async def test_same_idempotency_key_is_one_callback(
    make_outbox: OutboxFactory, db_url: str, receiver: Receiver, receiver_url: str
) -> None:
    a = await make_outbox(db_url)
    b = await make_outbox(db_url)
    url = f"{receiver_url}/cb"
    first = await a.enqueue(url, {"build_id": "b-2"}, kind="build_succeeded", idempotency_key="k-same")
    again = await a.enqueue(url, {"build_id": "b-2", "changed": True}, kind="build_succeeded", idempotency_key="k-same")
    # Two replicas racing with the same key still make one row.
    raced = await asyncio.gather(
        *(box.enqueue(url, {"build_id": "b-2"}, kind="build_succeeded", idempotency_key="k-same") for box in (a, b))
    )
    assert {first.id, again.id, *(r.id for r in raced)} == {first.id}
    assert len(await a.list()) == 1

    assert await a.deliver_due() + await b.deliver_due() == 1
    assert await a.deliver_due() + await b.deliver_due() == 0
    assert receiver.deliveries == Counter({"k-same": 1})
    assert receiver.bodies["k-same"] == {"build_id": "b-2"}  # the first body wins


async def test_concurrent_workers_never_double_deliver(
    make_outbox: OutboxFactory, db_url: str, receiver: Receiver, receiver_url: str
) -> None:
    receiver.delay = 0.05  # requests overlap, so the workers really race
    workers = [await make_outbox(db_url, policy=FAST) for _ in range(3)]
    keys = [f"k-race-{i}" for i in range(24)]
    for key in keys:
        await workers[0].enqueue(f"{receiver_url}/cb", {"key": key}, kind="build_succeeded", idempotency_key=key)

    delivered = 0
    for _ in range(20):
        results = await asyncio.gather(*(w.deliver_due() for w in workers for _ in range(2)))
        delivered += sum(results)
        if delivered >= len(keys):
            break
    assert delivered == len(keys)
    assert receiver.deliveries == Counter(dict.fromkeys(keys, 1))
    assert sum(receiver.attempts.values()) == len(keys)
    assert {r.attempts for r in await workers[1].list(limit=100)} == {1}


async def test_concurrent_running_workers_never_double_deliver(
    make_outbox: OutboxFactory, db_url: str, receiver: Receiver, receiver_url: str
) -> None:
    receiver.delay = 0.02
    workers = [await make_outbox(db_url) for _ in range(2)]
    for worker in workers:
        worker.start()
    keys = [f"k-live-{i}" for i in range(12)]
    for i, key in enumerate(keys):
        await workers[i % 2].enqueue(f"{receiver_url}/cb", {"key": key}, kind="build_succeeded", idempotency_key=key)
    await until(lambda: sum(receiver.deliveries.values()) >= len(keys), "all deliveries")
    # Once every row is delivered and unleased, every request that was sent has been answered.
    deadline = time.monotonic() + WAIT_SECONDS
    while any(r.status != "delivered" or r.lease_owner for r in await workers[0].list(limit=100)):
        assert time.monotonic() < deadline, "callbacks did not settle"
        await asyncio.sleep(0.02)
    assert receiver.deliveries == Counter(dict.fromkeys(keys, 1))
    assert sum(receiver.attempts.values()) == len(keys)
    assert {r.attempts for r in await workers[1].list(limit=100)} == {1}


async def test_gave_up_after_the_deadline_never_delivered(
    make_outbox: OutboxFactory, db_url: str, receiver: Receiver, receiver_url: str, settings: Settings
) -> None:
    short = settings.model_copy(update={"callback_deadline_seconds": 60})
    receiver.fail_times = 1000
    clock = Clock()
    policy = CallbackPolicy(base_seconds=1, cap_seconds=2, request_timeout_seconds=5, lease_seconds=10)
    outbox = await make_outbox(db_url, settings=short, clock=clock, policy=policy)
    record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-late")
    assert await outbox.deliver_due() == 0
    clock.advance(61)  # the service was down past the deadline
    assert await outbox.deliver_due() == 0

    gone = await outbox.get(record.id)
    assert gone is not None and gone.status == "gave_up" and gone.delivered_at is None
    assert gone.last_error is not None
    assert gone.last_error.startswith("deadline passed before delivery; last error: HTTP 500")
    assert receiver.attempts["k-late"] == 1 and receiver.deliveries["k-late"] == 0
    assert [r.id for r in await outbox.list(status="gave_up")] == [record.id]


async def test_gives_up_when_the_next_retry_would_miss_the_deadline(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str, settings: Settings
) -> None:
    short = settings.model_copy(update={"callback_deadline_seconds": 60})
    receiver.fail_times = 1000
    outbox = await make_outbox(sqlite_url, settings=short, policy=CallbackPolicy(base_seconds=200, cap_seconds=200))
    record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-miss")
    assert await outbox.deliver_due() == 0
    gone = await outbox.get(record.id)
    assert gone is not None and gone.status == "gave_up" and gone.last_status == 500
    assert gone.last_error is not None and gone.last_error.startswith("deadline passed after 1 attempts")
    assert receiver.deliveries["k-miss"] == 0


async def test_definite_rejection_gives_up_and_auth_failure_retries(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str, settings: Settings
) -> None:
    receiver.fail_times, receiver.fail_status = 1, 422
    outbox = await make_outbox(sqlite_url)
    rejected = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-422")
    await outbox.deliver_due()
    got = await outbox.get(rejected.id)
    assert got is not None and got.status == "gave_up" and got.last_status == 422 and got.attempts == 1

    # A sender keyed with another secret: the receiver answers 401, which is retried.
    wrong = settings.model_copy(update={"internal_callback_secret": SecretStr(secrets.token_hex(32))})
    misconfigured = await make_outbox(sqlite_url, settings=wrong, policy=CallbackPolicy(base_seconds=30))
    unsigned = await misconfigured.enqueue(f"{receiver_url}/cb", {"n": 2}, kind="build_failed", idempotency_key="k-401")
    await misconfigured.deliver_due()
    got = await misconfigured.get(unsigned.id)
    assert got is not None and got.status == "pending" and got.last_status == 401
    assert receiver.rejected == 1


async def test_host_not_allowed(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str, settings: Settings
) -> None:
    outbox = await make_outbox(sqlite_url)
    for url in ("http://cp.example.invalid/cb", "ftp://127.0.0.1/cb", "http://user:pw@127.0.0.1/cb"):
        with pytest.raises(HostNotAllowed):
            await outbox.enqueue(url, {"n": 1}, kind="build_failed", idempotency_key="k-host")
    assert await outbox.list() == []

    # Removed from the allow list after enqueue: never sent.
    record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-removed")
    narrowed = settings.model_copy(update={"allowed_control_plane_hosts": ["cp.example.invalid"]})
    later = await make_outbox(sqlite_url, settings=narrowed)
    assert await later.deliver_due() == 0
    got = await later.get(record.id)
    assert got is not None and got.status == "gave_up"
    assert got.last_error is not None and "ALLOWED_CONTROL_PLANE_HOSTS" in got.last_error
    assert receiver.attempts["k-removed"] == 0


async def test_secret_never_logged(
    make_outbox: OutboxFactory, sqlite_url: str, receiver: Receiver, receiver_url: str, callback_secret: bytes
) -> None:
    receiver.fail_times = 2
    with structlog.testing.capture_logs() as logs:  # raw events, before the redaction processor
        outbox = await make_outbox(sqlite_url)
        outbox.start()
        record = await outbox.enqueue(f"{receiver_url}/cb", {"n": 1}, kind="build_failed", idempotency_key="k-log")
        await until_status(outbox, record, "delivered")
        await outbox.aclose()
    text = json.dumps(logs, default=str)
    assert {e["event"] for e in logs} >= {"callback.enqueued", "callback.retry", "callback.delivered"}
    assert callback_secret.decode() not in text
    assert receiver.tokens and all(token not in text for token in receiver.tokens)


async def test_client_errors_are_retried(make_outbox: OutboxFactory, sqlite_url: str) -> None:
    """Transport failures from the client (here a receiver that resets) are retries, not crashes."""

    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    outbox = await make_outbox(
        sqlite_url, http_client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(reset))
    )
    record = await outbox.enqueue("http://127.0.0.1:9/cb", {"n": 1}, kind="build_failed", idempotency_key="k-reset")
    assert await outbox.deliver_due() == 0
    got = await outbox.get(record.id)
    assert got is not None and got.status == "pending" and got.last_status is None
    assert got.last_error == "RemoteProtocolError: peer closed connection"
