"""The Kubernetes API boundary: REST over httpx, exec over websockets, errors classified once.

Why an own thin client rather than ``kubernetes_asyncio`` or ``lightkube``:
the provider makes a dozen kinds of calls (pods, PVCs and network policies:
create, get, list, delete; pods/exec), and exec is the one that matters
most. ``kubernetes_asyncio``'s exec client speaks only ``v4.channel.k8s.io``
(no way to close stdin, so ``cat > file`` never ends) through aiohttp, a
second HTTP stack, with untyped generated models; ``lightkube`` has no exec
at all and its 1.x line moved to ``httpx2``. A thin client on httpx and
websockets (both already dependencies of the service) keeps one typed stack
and puts the error boundary exactly where the provider needs it.

Every response is classified here:

    401                       -> ProviderAuthError (after one retry with refreshed credentials)
    403                       -> ProviderAuthError (RBAC: see deploy/kubernetes/rbac.yaml)
    404                       -> ApiNotFound   (a SandboxNotFound; callers may turn it into "absent")
    409                       -> ApiConflict   (a Conflict; create resolves it)
    429, 5xx, transport, timeout -> retried with backoff + jitter, then ProviderUnavailable
    anything else (400, 422)  -> ApiRejected   (a ProviderError carrying the API's message)

Retrying is safe: every object has a deterministic name, so a create whose
answer was lost meets a 409 that the provider resolves by reading the object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from app.errors import Conflict, ProviderAuthError, ProviderError, ProviderUnavailable, SandboxNotFound
from app.providers.kubernetes.config import ClusterConfig

log = logging.getLogger(__name__)

#: Longest single backoff between retries, seconds.
BACKOFF_CAP = 4.0
#: Largest websocket message accepted from the API server (kubelets send 32 KiB or less).
MAX_MESSAGE_BYTES = 16 << 20


class ApiNotFound(SandboxNotFound):
    """The API answered 404 for the object (or the pod of an exec)."""


class ApiConflict(Conflict):
    """The API answered 409: the name exists already (``AlreadyExists``) or is being deleted."""

    def __init__(self, message: str, *, reason: str | None) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


class ApiRejected(ProviderError):
    """The API refused the request for good (400, 422, ...)."""

    def __init__(self, message: str, *, status: int, reason: str | None) -> None:
        super().__init__(message, status=status, reason=reason)
        self.status = status
        self.reason = reason


def status_message(body: Any) -> tuple[str, str | None]:
    """The ``message`` and ``reason`` of a ``Status`` body (or whatever the server sent)."""
    if isinstance(body, dict):
        return str(body.get("message") or ""), body.get("reason") or None
    return (str(body)[:300] if body else ""), None


def classify(status: int, body: Any, what: str) -> Exception:
    """The ``app.errors`` exception for a non-2xx answer to ``what`` (see the module docstring)."""
    message, reason = status_message(body)
    detail = f"{what}: {message}" if message else what
    if status == 401:
        return ProviderAuthError(
            f"kubernetes refused the credentials (401) during {what}: check KUBECONFIG or the service account token"
        )
    if status == 403:
        return ProviderAuthError(
            f"kubernetes forbids {detail} (403): the service account needs the Role in deploy/kubernetes/rbac.yaml"
        )
    if status == 404:
        return ApiNotFound(f"kubernetes: not found during {detail}")
    if status == 409:
        return ApiConflict(f"kubernetes conflict during {detail}", reason=reason)
    if is_transient_status(status):
        return ProviderUnavailable(f"kubernetes is unavailable ({status}) during {detail}", status=status)
    return ApiRejected(f"kubernetes rejected {detail} ({status})", status=status, reason=reason)


def is_transient_status(status: int) -> bool:
    """Whether the same request may succeed later."""
    return status == 429 or status >= 500


class KubeApi:
    """REST and exec calls to one API server, with the classification and retries above."""

    def __init__(
        self, cluster: ClusterConfig, *, timeout: float = 30.0, attempts: int = 4, backoff: float = 0.25
    ) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._client = httpx.AsyncClient(
            base_url=cluster.server,
            verify=cluster.ssl_context if cluster.ssl_context is not None else True,
            timeout=httpx.Timeout(timeout),
            trust_env=False,
            headers={"Accept": "application/json", "User-Agent": "sandbox-control"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Exponential backoff with equal jitter (``Retry-After`` honoured up to the cap)."""
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), BACKOFF_CAP)
        ceiling = min(BACKOFF_CAP, self.backoff * (2 ** (attempt - 1)))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call; returns the decoded JSON answer or raises (see the module docstring)."""
        refreshed = False
        attempt = 0
        extensions = {"sni_hostname": self.cluster.tls_server_name} if self.cluster.tls_server_name else None
        while True:
            attempt += 1
            try:
                headers = await self.cluster.credentials.headers()
                response = await self._client.request(
                    method, path, params=params, json=body, headers=headers, extensions=extensions
                )
            except (httpx.TransportError, TimeoutError) as exc:
                if attempt >= self.attempts:
                    raise ProviderUnavailable(f"kubernetes is unreachable during {what}: {exc!r}") from exc
                await self._pause(what, exc, attempt)
                continue
            if response.is_success:
                data: dict[str, Any] = response.json()
                return data
            if response.status_code == 401 and not refreshed:
                # A rotated or expired token: fetch it again once, without spending an attempt.
                refreshed = True
                attempt -= 1
                self.cluster.credentials.invalidate()
                continue
            error = classify(response.status_code, _json_or_text(response), what)
            if isinstance(error, ProviderUnavailable) and attempt < self.attempts:
                await self._pause(what, error, attempt, response.headers.get("retry-after"))
                continue
            raise error

    async def _pause(self, what: str, cause: object, attempt: int, retry_after: str | None = None) -> None:
        delay = self.delay(attempt, retry_after)
        log.warning("kubernetes: %s failed (%s), retry %d/%d in %.2f s", what, cause, attempt, self.attempts - 1, delay)
        await asyncio.sleep(delay)

    async def get_or_none(self, path: str, *, what: str) -> dict[str, Any] | None:
        """GET an object; ``None`` when it does not exist."""
        try:
            return await self.request("GET", path, what=what)
        except ApiNotFound:
            return None

    async def list_all(self, path: str, *, what: str, selector: str, page: int = 500) -> list[dict[str, Any]]:
        """Every item of a label-selected list, following ``continue`` tokens."""
        items: list[dict[str, Any]] = []
        params = {"labelSelector": selector, "limit": str(page)}
        while True:
            answer = await self.request("GET", path, what=what, params=params)
            items.extend(item for item in answer.get("items") or [] if isinstance(item, dict))
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": str(token)}

    @asynccontextmanager
    async def websocket(
        self, path: str, query: Sequence[tuple[str, str]], protocols: Sequence[str], *, what: str
    ) -> AsyncIterator[ClientConnection]:
        """An upgraded connection to ``path`` (e.g. pods/exec), negotiating one of ``protocols``.

        Opening is retried like a request (nothing has run yet); once open,
        the connection is the caller's.
        """
        base = self.cluster.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        url = f"{base}{path}?{urlencode(list(query))}"
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            headers = await self.cluster.credentials.headers()
            try:
                connection = await connect(
                    url,
                    additional_headers=headers,
                    subprotocols=[Subprotocol(p) for p in protocols],
                    ssl=self.cluster.ssl_context if url.startswith("wss://") else None,
                    server_hostname=self.cluster.tls_server_name,
                    compression=None,
                    proxy=None,
                    open_timeout=self.timeout,
                    max_size=MAX_MESSAGE_BYTES,
                    user_agent_header="sandbox-control",
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401 and not refreshed:
                    refreshed, attempt = True, attempt - 1
                    self.cluster.credentials.invalidate()
                    continue
                error = classify(status, _decode(bytes(exc.response.body or b"")), what)
                if isinstance(error, ProviderUnavailable) and attempt < self.attempts:
                    await self._pause(what, error, attempt)
                    continue
                raise error from exc
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                if attempt >= self.attempts:
                    raise ProviderUnavailable(f"kubernetes is unreachable during {what}: {exc!r}") from exc
                await self._pause(what, exc, attempt)
                continue
            break
        try:
            yield connection
        finally:
            await asyncio.shield(connection.close())


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
