"""When a callback is delivered, retried or given up, and where a build's failure goes."""

from __future__ import annotations

import dataclasses
import random
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from app.settings import Settings

#: Status codes that mean "try again later" although they are 4xx.
RETRYABLE_4XX = frozenset({401, 403, 408, 425, 429})

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
