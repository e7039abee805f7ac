"""The callback outbox: persisted callbacks, claimed under leases, delivered signed at least once."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx

from app.errors import BadRequest, HostNotAllowed
from app.logging import get_logger
from app.services.callbacks.delivery import Attempt, post_signed
from app.services.callbacks.policy import CallbackPolicy
from app.services.hosts import check_url_allowed
from app.settings import MIN_SECRET_BYTES, ConfigError, Settings
from app.storage.state.callbacks import CALLBACK_STATUSES, DELIVERED, GAVE_UP, PENDING, CallbackRecord, CallbackStore
from app.storage.state.times import utcnow

log = get_logger("callbacks")

#: Status codes that mean "try again later" although they are 4xx.
RETRYABLE_4XX = frozenset({401, 403, 408, 425, 429})
#: How much of a failed response's body is kept in ``last_error``.
ERROR_BODY_BYTES = 300
#: Batches one ``deliver_due`` pass may claim before it yields to the next pass.
MAX_BATCHES_PER_PASS = 20

Outcome = Literal["delivered", "retry", "give_up"]


class CallbackOutbox:
    """Persists callbacks and delivers them, signed, at least once.

    ``store`` is the state store's ``CallbackStore``;
    ``http_client_factory`` builds the one ``httpx.AsyncClient`` used until
    ``aclose``. ``clock`` exists for tests that need time to pass.
    """

    def __init__(
        self,
        settings: Settings,
        store: CallbackStore,
        http_client_factory: Callable[[], httpx.AsyncClient] = lambda: httpx.AsyncClient(follow_redirects=False),
        *,
        policy: CallbackPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._store = store
        self._client_factory = http_client_factory
        self._client: httpx.AsyncClient | None = None
        self.policy = policy or CallbackPolicy.from_settings(settings)
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._claims: set[str] = set()

    # -- configuration -----------------------------------------------------

    def validate(self) -> None:
        """Raise ``ConfigError`` unless callbacks can be signed.

        The lifespan calls it when builds are enabled, so a missing or weak
        ``INTERNAL_CALLBACK_SECRET`` stops the service at start instead of
        leaving callbacks that can never be sent. ``start`` calls it too.
        """
        secret = self._settings.internal_callback_secret
        value = secret.get_secret_value() if secret is not None else ""
        if not value:
            raise ConfigError("INTERNAL_CALLBACK_SECRET is not set; build callbacks cannot be signed")
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"INTERNAL_CALLBACK_SECRET is shorter than {MIN_SECRET_BYTES} bytes")

    def _secret(self) -> bytes:
        self.validate()
        assert self._settings.internal_callback_secret is not None
        return self._settings.internal_callback_secret.get_secret_value().encode()

    # -- producing ---------------------------------------------------------

    async def enqueue(self, url: str, payload: Mapping[str, Any], *, kind: str, idempotency_key: str) -> CallbackRecord:
        """Persist a callback and wake the worker; returns the stored record.

        The same ``idempotency_key`` twice is one callback: the first body
        wins and the stored record is returned. Raises ``HostNotAllowed`` when
        the URL's host is not in ``ALLOWED_CONTROL_PLANE_HOSTS`` (callers
        check earlier; this is defence in depth) and ``BadRequest`` for an
        empty, overlong or non-printable key or kind.
        """
        check_url_allowed(url, self._settings.allowed_control_plane_hosts, field="callback_url")
        # The key travels as a header: control characters would fail every attempt.
        key_ok = 0 < len(idempotency_key) <= 256 and idempotency_key.isascii() and idempotency_key.isprintable()
        if not key_ok or not 0 < len(kind) <= 64:
            raise BadRequest("idempotency_key (1-256 printable ASCII chars) and kind (1-64 chars) are required")
        body = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True, allow_nan=False)
        now = self._clock()
        record = CallbackRecord(
            id=uuid.uuid4().hex,
            url=url,
            body=body,
            idempotency_key=idempotency_key,
            kind=kind,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=self._settings.callback_deadline_seconds),
        )
        stored, created = await self._store.insert(record)
        if created:
            log.info("callback.enqueued", callback_id=stored.id, kind=kind)
        elif (stored.url, stored.body, stored.kind) != (url, body, kind):
            log.warning("callback.duplicate_differs", callback_id=stored.id, kind=kind)
        self._wake.set()
        return stored

    # -- reading -----------------------------------------------------------

    async def get(self, callback_id: str) -> CallbackRecord | None:
        """One callback by id."""
        return await self._store.get(callback_id)

    async def list(self, status: str | None = None, limit: int = 100) -> builtins.list[CallbackRecord]:
        """Callbacks for operators, newest first; ``status`` is pending, delivered or gave_up."""
        if status is not None and status not in CALLBACK_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(CALLBACK_STATUSES)}")
        return await self._store.list(status=status, limit=max(1, min(limit, 1000)))

    # -- delivering --------------------------------------------------------

    async def deliver_due(self) -> int:
        """Claim due callbacks and send them; returns how many were delivered.

        Raises ``ConfigError`` without the callback secret (nothing is claimed).
        """
        secret = self._secret()
        delivered = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            now = self._clock()
            for record in await self._store.expire_overdue(now):
                log.error("callback.gave_up", callback_id=record.id, kind=record.kind, error=record.last_error)
            owner = uuid.uuid4().hex
            # Registered before the claim so that ``aclose`` can hand back the
            # leases of a pass cancelled half-way.
            self._claims.add(owner)
            try:
                claimed = await self._store.claim_due(
                    now=now,
                    lease_until=now + timedelta(seconds=self.policy.lease_seconds),
                    owner=owner,
                    limit=self.policy.batch_size,
                )
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._deliver(record, owner, secret)) for record in claimed]
            except Exception:
                await self._release({owner})
                raise
            self._claims.discard(owner)
            delivered += sum(task.result() for task in tasks)
            if len(claimed) < self.policy.batch_size:
                break
        return delivered

    async def _deliver(self, record: CallbackRecord, owner: str, secret: bytes) -> bool:
        try:
            # Re-checked at send time: the operator may have removed the host since enqueue.
            check_url_allowed(record.url, self._settings.allowed_control_plane_hosts, field="callback_url")
        except HostNotAllowed as exc:
            attempt = Attempt("give_up", error=exc.message)
        else:
            if self._client is None:
                self._client = self._client_factory()
            attempt = await post_signed(self._client, record, secret, timeout=self.policy.request_timeout_seconds)
        now = self._clock()
        fields: dict[str, Any] = {"last_status": attempt.status_code}
        if attempt.outcome == "delivered":
            fields.update(status=DELIVERED, delivered_at=now, last_error=None)
        elif attempt.outcome == "retry":
            delay = self.policy.backoff(record.attempts)
            if attempt.retry_after is not None:
                delay = max(delay, min(attempt.retry_after, self.policy.cap_seconds))
            next_at = now + timedelta(seconds=delay)
            if next_at >= record.deadline_at:
                attempt.outcome = "give_up"
                attempt.error = f"deadline passed after {record.attempts} attempts; last error: {attempt.error}"
            else:
                fields.update(next_attempt_at=next_at, last_error=attempt.error)
        if attempt.outcome == "give_up":
            fields.update(status=GAVE_UP, last_error=attempt.error)
        if not await self._store.finish_attempt(record.id, owner, **fields):
            # Our lease ran out and another worker owns the row; its outcome stands.
            log.warning("callback.lease_lost", callback_id=record.id, kind=record.kind)
            return False
        context = {"callback_id": record.id, "kind": record.kind, "attempts": record.attempts}
        if attempt.outcome == "delivered":
            log.info("callback.delivered", **context, status_code=attempt.status_code)
        elif attempt.outcome == "retry":
            log.warning("callback.retry", **context, error=attempt.error, next_attempt_at=fields["next_attempt_at"])
        else:
            log.error("callback.gave_up", **context, error=attempt.error)
        return attempt.outcome == "delivered"

    # -- the worker --------------------------------------------------------

    def start(self) -> None:
        """Run ``deliver_due`` now, after every ``enqueue`` and at least every poll interval."""
        self.validate()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="callbacks:outbox")

    async def _run(self) -> None:
        while True:
            # Cleared before the pass: an enqueue during it triggers another.
            self._wake.clear()
            delay = self.policy.poll_interval_seconds
            try:
                await self.deliver_due()
                due = await self._store.next_due_at(self._clock())
                if due is not None:
                    delay = min(delay, max(0.0, (due - self._clock()).total_seconds()))
            except Exception as exc:  # keep the worker alive; the next pass retries
                log.warning("callback.worker_failed", error=str(exc), error_type=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def aclose(self) -> None:
        """Stop the worker, hand back unfinished claims, close the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._release(set(self._claims))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _release(self, owners: set[str]) -> None:
        """Hand back leases of claims that will not finish, so no one waits for them to run out."""
        self._claims -= owners
        if not owners:
            return
        try:
            # Shielded: a cancelled shutdown must still release, or the next replica waits a lease.
            await asyncio.shield(self._store.release_leases(owners))
        except Exception as exc:  # the leases run out on their own
            log.warning("callback.release_failed", error=str(exc), error_type=type(exc).__name__)
