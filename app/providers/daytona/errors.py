"""The Daytona error boundary: one classifier, one bounded retry loop.

Every SDK call of the ``daytona`` provider goes through ``DaytonaCalls.call``,
which maps what the SDK raises to ``app.errors`` exactly once:

    401 / 403                      -> ProviderAuthError   (immediately, never retried)
    404                            -> SandboxNotFound     (when the call names a sandbox)
    429, 5xx, connection, timeout  -> retried with backoff + jitter, then ProviderUnavailable
    anything else (400, 409, 422)  -> ProviderError

Retrying is safe because every call the provider makes is idempotent: ``create``
sends a deterministic sandbox name, so a replay after a lost answer meets a
409 that the provider resolves by looking the name up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import httpx
from daytona import (
    DaytonaAuthenticationError,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaTimeoutError,
)

from app.errors import ProviderAuthError, ProviderError, ProviderUnavailable, SandboxNotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts per call (first try included) for transient failures.
DEFAULT_ATTEMPTS = 4
#: Backoff base and cap, seconds: 0.25, 0.5, 1.0 ... with 50-100 % "equal jitter".
BACKOFF_BASE = 0.25
BACKOFF_CAP = 4.0

_TRANSIENT_TRANSPORT = (aiohttp.ClientError, httpx.TransportError, ConnectionError, TimeoutError)


class DaytonaConflict(ProviderError):
    """The API answered 409 (e.g. a sandbox with that name already exists)."""


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK or transport error, when there is one."""
    if isinstance(exc, DaytonaError):
        return exc.status_code
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request later may succeed."""
    status = status_of(exc)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(exc, DaytonaRateLimitError | DaytonaConnectionError | DaytonaTimeoutError):
        return True
    return isinstance(exc, _TRANSIENT_TRANSPORT)


def translate(exc: BaseException, what: str, ref: str | None) -> Exception:
    """The ``app.errors`` exception for an SDK failure of ``what`` (raise it ``from exc``)."""
    status = status_of(exc)
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if status in (401, 403) or isinstance(exc, DaytonaAuthenticationError | DaytonaForbiddenError):
        return ProviderAuthError(
            f"daytona refused the credentials ({status or 'auth'}) during {what}: check DAYTONA_API_KEY", status=status
        )
    if ref is not None and (status == 404 or isinstance(exc, DaytonaNotFoundError)):
        return SandboxNotFound(f"daytona sandbox {ref} not found", ref=ref)
    if is_transient(exc):
        return ProviderUnavailable(f"daytona is unavailable during {what}: {detail}", status=status)
    if status == 409 or isinstance(exc, DaytonaConflictError):
        return DaytonaConflict(f"daytona conflict during {what}: {detail}", status=status)
    return ProviderError(f"daytona failed during {what}: {detail}", status=status)


class DaytonaCalls:
    """Runs SDK coroutines with classification and bounded, jittered retries."""

    def __init__(self, *, attempts: int = DEFAULT_ATTEMPTS, backoff_base: float = BACKOFF_BASE) -> None:
        self.attempts = max(1, attempts)
        self.backoff_base = backoff_base

    async def call(self, what: str, factory: Callable[[], Awaitable[T]], *, ref: str | None = None) -> T:
        """Await ``factory()`` (a fresh coroutine per attempt); see the module docstring.

        Errors the provider raised itself (``app.errors``) pass through untouched.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return await factory()
            except (ProviderError, ProviderUnavailable, SandboxNotFound):
                raise
            except Exception as exc:
                if not is_transient(exc) or attempt == self.attempts:
                    raise translate(exc, what, ref) from exc
                delay = self.delay(attempt)
                log.warning(
                    "daytona: %s failed (%s), retry %d/%d in %.2f s", what, exc, attempt, self.attempts - 1, delay
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def delay(self, attempt: int) -> float:
        """Exponential backoff with equal jitter, so replicas retrying one outage spread out."""
        ceiling = min(BACKOFF_CAP, self.backoff_base * (2 ** (attempt - 1)))
        jitter = random.uniform(0, ceiling / 2)
        return float(ceiling / 2 + jitter)
