"""Modal SDK exceptions mapped, once, to the service's errors; bounded retries.

Every SDK call of the provider goes through ``SdkCaller.call``: transient
failures (connection trouble, Modal's 5xx-like ``ServiceError`` /
``InternalError``, rate limits, client-side timeouts) are retried with
exponential backoff and jitter a bounded number of times, then answered as
``ProviderUnavailable``. Rejected credentials are never retried
(``ProviderAuthError`` at once). The SDK's types come from the injected SDK
namespace, so a fake that raises the SDK's own classes is classified exactly
like the real thing.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from app.errors import (
    BadRequest,
    Conflict,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SandboxControlError,
    SandboxNotFound,
    SandboxNotRunning,
    UnsupportedSpec,
)
from app.providers.modal.spec import PROVIDER

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts for a retryable call (the first one included).
ATTEMPTS = 4
#: Cap of one backoff sleep, seconds.
MAX_BACKOFF = 4.0

#: Words in an SDK ``InvalidError`` message -> the request field it is about.
_FIELD_HINTS = {
    "gpu": "resources.gpu",
    "cpu": "resources.cpu",
    "memory": "resources.memory_mb",
    "idle_timeout": "labels",
    "timeout": "ttl_seconds",
    "image": "image",
    "tag": "labels",
    "port": "labels",
}


class SdkCaller:
    """Runs SDK coroutines with translation and bounded retries."""

    def __init__(self, sdk: Any, *, base_delay: float = 0.25, attempts: int = ATTEMPTS) -> None:
        exc = sdk.exception
        self._sdk_error: type[BaseException] = exc.Error
        self._auth = (exc.AuthError, exc.PermissionDeniedError)
        self._not_found = exc.NotFoundError
        self._conflict = exc.ConflictError
        self._invalid = exc.InvalidError
        self._exists = exc.AlreadyExistsError
        # Sandbox-level ends, not transport trouble: never retried.
        self._ended = (exc.SandboxTimeoutError, exc.SandboxTerminatedError, exc.ExecTimeoutError)
        self._transient = (
            exc.ConnectionError,
            exc.ServiceError,
            exc.InternalError,
            exc.ResourceExhaustedError,
            exc.TimeoutError,
            builtins.ConnectionError,
            builtins.TimeoutError,
        )
        self._base_delay = base_delay
        self._attempts = max(1, attempts)

    async def call(
        self,
        what: str,
        op: Callable[[], Awaitable[T]],
        *,
        ref: str | None = None,
        field: str | None = None,
        retry: bool = True,
    ) -> T:
        """Await ``op()``; retry transient failures (if ``retry``), translate the rest.

        ``ref`` names the sandbox the call is about (NotFound -> ``SandboxNotFound``);
        ``field`` the request field an invalid/not-found answer refers to.
        """
        for attempt in range(self._attempts):
            try:
                return await op()
            except SandboxControlError:
                raise
            except Exception as exc:
                last = attempt == self._attempts - 1
                if retry and not last and self.is_transient(exc):
                    delay = min(MAX_BACKOFF, self._base_delay * 2**attempt) * random.uniform(0.5, 1.0)
                    log.info("modal provider: %s failed (%s); retry %d in %.2fs", what, exc, attempt + 1, delay)
                    await asyncio.sleep(delay)
                    continue
                raise self.translate(exc, what, ref=ref, field=field) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def fail(self, exc: Exception, what: str, *, ref: str | None = None) -> NoReturn:
        """Raise the translation of ``exc`` (``exc`` itself when it is not the SDK's)."""
        mapped = self.translate(exc, what, ref=ref)
        if mapped is exc:
            raise exc
        raise mapped from exc

    def is_transient(self, exc: BaseException) -> bool:
        """True for failures a later attempt may not have."""
        return isinstance(exc, self._transient) and not isinstance(exc, self._ended)

    def translate(
        self, exc: BaseException, what: str, *, ref: str | None = None, field: str | None = None
    ) -> BaseException:
        """The service error for an SDK (or transport) exception; other bugs pass through unchanged."""
        text = f"modal {what}: {exc or type(exc).__name__}"
        if isinstance(exc, self._auth):
            return ProviderAuthError(f"Modal refused the credentials ({what}); check MODAL_TOKEN_ID/SECRET: {exc}")
        if isinstance(exc, self._not_found):
            if ref is not None:
                return SandboxNotFound(f"no Modal sandbox {ref!r}", ref=ref)
            if field is not None:
                return UnsupportedSpec(field, PROVIDER, str(exc))
            return ProviderError(text)
        if isinstance(exc, self._ended) or (ref is not None and isinstance(exc, self._conflict)):
            return SandboxNotRunning(f"Modal sandbox {ref!r} is not running", ref=ref)
        if isinstance(exc, self._exists):
            return Conflict(text)
        if isinstance(exc, self._invalid):
            named = field or _field_in(str(exc))
            return UnsupportedSpec(named, PROVIDER, str(exc)) if named else BadRequest(text)
        if self.is_transient(exc):
            return ProviderUnavailable(f"Modal is unavailable ({what}): {exc}")
        if isinstance(exc, self._sdk_error):
            return ProviderError(text)
        return exc


def _field_in(message: str) -> str | None:
    lowered = message.lower()
    for word, name in _FIELD_HINTS.items():
        if word in lowered:
            return name
    return None
