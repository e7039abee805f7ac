"""One signed POST of a callback, and what its answer means.

Signing reuses ``app.auth``: ``Authorization: Bearer <ms>.<hmac>`` and
``X-Sandbox-Signature`` over the method, the URL's ``path?query`` and the
sha256 of the exact body bytes. Whatever is kept of a failed answer is
scrubbed of the secret and the token (a receiver may echo our headers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import httpx

from app.auth import make_token, sign_request
from app.logging import Redactor
from app.services.callbacks.policy import Outcome, classify
from app.storage.state.callbacks import CallbackRecord

#: How much of a failed response's body is kept in ``last_error``.
ERROR_BODY_BYTES = 300


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None  # HTTP-date form ignored: backoff applies


@dataclasses.dataclass
class Attempt:
    """What one POST came to, before it is written back."""

    outcome: Outcome
    error: str | None = None
    status_code: int | None = None
    retry_after: float | None = None


async def post_signed(client: httpx.AsyncClient, record: CallbackRecord, secret: bytes, *, timeout: float) -> Attempt:
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
    try:
        async with asyncio.timeout(timeout):
            request = client.build_request("POST", url, content=body, headers=headers)
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                outcome = classify(response.status_code)
                excerpt = b"" if outcome == "delivered" else await _read_some(response, ERROR_BODY_BYTES)
            finally:
                await response.aclose()
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        # Messages of httpx transport errors carry no URL; the type names the failure.
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Attempt("retry", error=redactor.scrub(error)[:500])
    if outcome == "delivered":
        return Attempt(outcome, status_code=response.status_code)
    text = excerpt.decode(errors="replace").strip()
    error = f"HTTP {response.status_code}" + (f": {text}" if text else "")
    return Attempt(
        outcome,
        error=redactor.scrub(error),
        status_code=response.status_code,
        retry_after=_retry_after(response.headers),
    )


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a body: a receiver's error page is not ours to buffer."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]
