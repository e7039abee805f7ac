"""The durable, signed callback outbox (DESIGN 6 and 7).

A callback is persisted before anyone is told it exists, then delivered
at least once by a worker that any replica may run:

* **Claiming** is a lease in the database (``CallbackQueries.claim_due_callbacks``):
  replicas sharing one database never send the same callback within one lease
  window. A worker that dies mid-request leaves its lease to run out, and the
  callback is sent again afterwards: receivers must honour ``Idempotency-Key``.
* **Signing** reuses ``app.auth``: ``Authorization: Bearer <ms>.<hmac>`` and
  ``X-Sandbox-Signature: t=<ms>,v1=<hmac>`` over the method, the URL's
  ``path?query`` and the sha256 of the exact body bytes, both keyed with
  ``INTERNAL_CALLBACK_SECRET``. No nonce: a control plane that parses the
  documented ``t=,v1=`` form strictly must accept it, and each attempt carries
  a new timestamp anyway.
* **Outcomes** (``classify``): 2xx delivered. 408, 425, 429, 5xx, timeouts and
  connection errors are retried. 401 and 403 are retried too: they usually
  mean the receiver's secret is mid-rotation or misconfigured, which an
  operator fixes, while a dropped build result is lost for good. Any other
  status (3xx, since redirects are never followed; 400, 404, 409, 422, ...)
  is the receiver's definite "no" and the callback is given up at once.
* **Retries** back off exponentially (``base * 2**(attempts-1)``, capped, then
  "equal jitter" of 50-100%), honouring ``Retry-After`` seconds within the cap.
  A callback is given up (``gave_up`` with ``last_error``) when its next try
  would fall after ``deadline_at`` (created + ``SANDBOX_CALLBACK_DEADLINE``),
  or when the deadline passed while no worker ran.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.auth import make_token, sign_request
from app.errors import BadRequest, HostNotAllowed
from app.logging import Redactor, get_logger
from app.services.hosts import check_url_allowed
from app.settings import MIN_SECRET_BYTES, ConfigError, Settings
from app.storage.state_callbacks import CALLBACK_STATUSES, DELIVERED, GAVE_UP, PENDING, CallbackQueries, CallbackRecord
from app.storage.times import utcnow

__all__ = ["CallbackOutbox", "CallbackPolicy", "CallbackRecord", "classify", "failure_url"]

log = get_logger("callbacks")

#: Status codes that mean "try again later" although they are 4xx.
RETRYABLE_4XX = frozenset({401, 403, 408, 425, 429})
#: How much of a failed response's body is kept in ``last_error``.
ERROR_BODY_BYTES = 300
#: Batches one ``deliver_due`` pass may claim before it yields to the next pass.
MAX_BATCHES_PER_PASS = 20

Outcome = Literal["delivered", "retry", "give_up"]


@dataclasses.dataclass(frozen=True)
class CallbackPolicy:
    """Timing of delivery. Defaults suit production; tests shrink them."""

    #: First retry delay; doubled per attempt.
    base_seconds: float = 2.0
    #: Largest retry delay.
    cap_seconds: float = 300.0
    #: Longest idle sleep of the worker; enqueue wakes it at once.
    poll_interval_seconds: float = 5.0
    #: How long a claim keeps other workers off a row. Must outlast a request.
    lease_seconds: float = 60.0
    #: Bound on one whole POST (connect, send, first bytes of the answer).
    request_timeout_seconds: float = 10.0
    #: Callbacks claimed and sent concurrently per batch.
    batch_size: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackPolicy:
        """The policy configured through ``SANDBOX_CALLBACK_*``."""
        return cls(
            base_seconds=settings.callback_retry_base_seconds,
            cap_seconds=settings.callback_retry_cap_seconds,
            poll_interval_seconds=settings.callback_poll_interval_seconds,
            lease_seconds=settings.callback_lease_seconds,
            request_timeout_seconds=settings.callback_request_timeout_seconds,
        )

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.cap_seconds:
            raise ValueError("need 0 < base_seconds <= cap_seconds")
        if self.poll_interval_seconds <= 0 or self.batch_size < 1:
            raise ValueError("poll_interval_seconds and batch_size must be positive")
        # The lease must outlive the request plus the bookkeeping around it,
        # or a slow receiver would let a second worker send the same callback.
        if self.lease_seconds < 2 * self.request_timeout_seconds:
            raise ValueError("lease_seconds must be at least twice request_timeout_seconds")

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after ``attempts`` failed ones."""
        exponent = min(max(attempts - 1, 0), 32)  # bounded: 2**32 * base is past any cap
        delay = min(self.cap_seconds, self.base_seconds * 2**exponent)
        return float(delay * random.uniform(0.5, 1.0))


def classify(status_code: int) -> Outcome:
    """What an HTTP answer means for a callback (rules in the module docstring)."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code >= 500 or status_code in RETRYABLE_4XX:
        return "retry"
    return "give_up"


def failure_url(callback_url: str) -> str:
    """The build-failed URL of a build's ``callback_url`` (DESIGN 6).

    The last path segment is replaced by ``build-failed``; the query string
    is kept and a fragment (never sent) dropped. A trailing slash means the
    last segment is empty: ``/b/1/`` becomes ``/b/1/build-failed``.
    """
    parts = urlsplit(callback_url)
    head, _, _ = parts.path.rpartition("/")
    return urlunsplit((parts.scheme, parts.netloc, f"{head}/build-failed", parts.query, ""))


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None  # HTTP-date form ignored: backoff applies


def _default_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False)


@dataclasses.dataclass
class _Attempt:
    """What one POST came to, before it is written back."""

    outcome: Outcome
    error: str | None = None
    status_code: int | None = None
    retry_after: float | None = None


class CallbackOutbox:
    """Persists callbacks and delivers them, signed, at least once.

    ``store`` is the ``StateStore`` (any ``CallbackQueries``);
    ``http_client_factory`` builds the one ``httpx.AsyncClient`` used until
    ``aclose``. ``clock`` exists for tests that need time to pass.
    """

    def __init__(
        self,
        settings: Settings,
        store: CallbackQueries,
        http_client_factory: Callable[[], httpx.AsyncClient] = _default_client,
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
        stored, created = await self._store.insert_callback(record)
        if created:
            log.info("callback.enqueued", callback_id=stored.id, kind=kind)
        elif (stored.url, stored.body, stored.kind) != (url, body, kind):
            log.warning("callback.duplicate_differs", callback_id=stored.id, kind=kind)
        self._wake.set()
        return stored

    # -- reading -----------------------------------------------------------

    async def get(self, callback_id: str) -> CallbackRecord | None:
        """One callback by id."""
        return await self._store.get_callback(callback_id)

    async def list(self, status: str | None = None, limit: int = 100) -> builtins.list[CallbackRecord]:
        """Callbacks for operators, newest first; ``status`` is pending, delivered or gave_up."""
        if status is not None and status not in CALLBACK_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(CALLBACK_STATUSES)}")
        return await self._store.list_callbacks(status=status, limit=max(1, min(limit, 1000)))

    # -- delivering --------------------------------------------------------

    async def deliver_due(self) -> int:
        """Claim due callbacks and send them; returns how many were delivered.

        Raises ``ConfigError`` without the callback secret (nothing is claimed).
        """
        secret = self._secret()
        delivered = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            now = self._clock()
            for record in await self._store.expire_overdue_callbacks(now):
                log.error("callback.gave_up", callback_id=record.id, kind=record.kind, error=record.last_error)
            owner = uuid.uuid4().hex
            # Registered before the claim so that ``aclose`` can hand back the
            # leases of a pass cancelled half-way.
            self._claims.add(owner)
            try:
                claimed = await self._store.claim_due_callbacks(
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
            attempt = _Attempt("give_up", error=exc.message)
        else:
            attempt = await self._post(record, secret)
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
        if not await self._store.finish_callback_attempt(record.id, owner, **fields):
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

    async def _post(self, record: CallbackRecord, secret: bytes) -> _Attempt:
        """One signed POST; every failure becomes an ``_Attempt``, scrubbed of credentials."""
        body = record.body.encode()
        url = httpx.URL(record.url)
        token = make_token(secret)
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Sandbox-Signature": sign_request(
                secret, "POST", url.raw_path.decode("ascii"), hashlib.sha256(body).hexdigest()
            ),
            "Idempotency-Key": record.idempotency_key,
            "Content-Type": "application/json",
        }
        # A receiver may echo our headers back; what we keep of its answer is scrubbed.
        redactor = Redactor([secret.decode(errors="replace"), token])
        if self._client is None:
            self._client = self._client_factory()
        try:
            async with asyncio.timeout(self.policy.request_timeout_seconds):
                request = self._client.build_request("POST", url, content=body, headers=headers)
                response = await self._client.send(request, stream=True, follow_redirects=False)
                try:
                    outcome = classify(response.status_code)
                    excerpt = b"" if outcome == "delivered" else await _read_some(response, ERROR_BODY_BYTES)
                finally:
                    await response.aclose()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            # Messages of httpx transport errors carry no URL; the type names the failure.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _Attempt("retry", error=redactor.scrub(error)[:500])
        if outcome == "delivered":
            return _Attempt(outcome, status_code=response.status_code)
        text = excerpt.decode(errors="replace").strip()
        error = f"HTTP {response.status_code}" + (f": {text}" if text else "")
        return _Attempt(
            outcome,
            error=redactor.scrub(error),
            status_code=response.status_code,
            retry_after=_retry_after(response.headers),
        )

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
                due = await self._store.next_callback_due_at(self._clock())
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
            await asyncio.shield(self._store.release_callback_leases(owners))
        except Exception as exc:  # the leases run out on their own
            log.warning("callback.release_failed", error=str(exc), error_type=type(exc).__name__)


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a body: a receiver's error page is not ours to buffer."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]
