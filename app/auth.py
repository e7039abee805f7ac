"""HMAC authentication: inbound verification and outbound signing (DESIGN 7).

Two schemes share one secret set:

* **Bearer token** ``<ms>.<hex>``: HMAC-SHA256 over the decimal epoch-ms text,
  accepted within ``±skew``. Compatible with Open-Inspect control planes.
* **Signed request** ``X-Sandbox-Signature: t=<ms>,v1=<hex>`` over
  ``<ms>\\n<METHOD>\\n<path?query>\\n<sha256 hex of body>``. It binds the
  signature to one endpoint and one body, and a replay cache refuses a second
  use within the skew window.

Several secrets may be active at once (rotation): each verifies, the first signs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from app.errors import Unauthorized

SIGNATURE_HEADER = "x-sandbox-signature"
#: A streamed upload's body hash, sent ahead of the body so the signature can cover it.
CONTENT_SHA256_HEADER = "x-content-sha256"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


def _hmac_hex(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def make_token(secret: bytes, at_ms: int | None = None) -> str:
    """A bearer token ``<ms>.<hex hmac>`` valid for ±skew around ``at_ms``."""
    stamp = str(now_ms() if at_ms is None else at_ms)
    return f"{stamp}.{_hmac_hex(secret, stamp.encode())}"


#: Seconds a signed query parameter stays valid (browsers cannot set headers on a WebSocket).
QUERY_TOKEN_SECONDS = 60
#: The query parameter that carries it.
QUERY_TOKEN_PARAM = "access_token"


def _query_message(stamp: str, path: str) -> bytes:
    return f"{stamp}\nQUERY\n{path}".encode()


def make_query_token(secret: bytes, path: str, at_ms: int | None = None) -> str:
    """``<ms>.<hex hmac>`` over the stamp and ``path``: opens that one path for ``QUERY_TOKEN_SECONDS``."""
    stamp = str(now_ms() if at_ms is None else at_ms)
    return f"{stamp}.{_hmac_hex(secret, _query_message(stamp, path))}"


def signing_string(stamp: str, method: str, path_query: str, body_sha256: str, nonce: str = "") -> bytes:
    """The signed text; an optional nonce (our extension) is appended on a fifth line."""
    base = f"{stamp}\n{method.upper()}\n{path_query}\n{body_sha256}"
    return (f"{base}\n{nonce}" if nonce else base).encode()


def sign_request(
    secret: bytes,
    method: str,
    path_query: str,
    body_sha256: str = EMPTY_BODY_SHA256,
    at_ms: int | None = None,
    nonce: str = "",
) -> str:
    """The ``X-Sandbox-Signature`` header value for one request.

    Two identical requests in the same millisecond would carry the same
    signature and the second would look like a replay; a random ``nonce``
    (``n=``) makes each signature unique. Verifiers accept both forms.
    """
    stamp = str(now_ms() if at_ms is None else at_ms)
    signature = _hmac_hex(secret, signing_string(stamp, method, path_query, body_sha256, nonce))
    return f"t={stamp},n={nonce},v1={signature}" if nonce else f"t={stamp},v1={signature}"


def request_headers(secret: bytes, method: str, path_query: str, body_sha256: str) -> dict[str, str]:
    """The headers a client sends to authenticate one request: a bearer token and a signature."""
    stamp = now_ms()
    return {
        "Authorization": f"Bearer {make_token(secret, stamp)}",
        "X-Sandbox-Signature": sign_request(secret, method, path_query, body_sha256, stamp, nonce=secrets.token_hex(8)),
    }


def _check_stamp(stamp: str, skew_seconds: int, at_ms: int) -> int:
    if not stamp.isdigit() or len(stamp) > 16:
        raise Unauthorized("malformed timestamp")
    value = int(stamp)
    if abs(at_ms - value) > skew_seconds * 1000:
        raise Unauthorized("token expired or not yet valid")
    return value


def _matches_any(secrets: Sequence[bytes], message: bytes, signature: str) -> bool:
    # Compare against every secret (no early exit) so timing reveals nothing.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(_hmac_hex(secret, message), signature)
    return matched


def verify_token(token: str, secrets: Sequence[bytes], skew_seconds: int, at_ms: int | None = None) -> None:
    """Raise ``Unauthorized`` unless ``token`` is a fresh bearer token of one of ``secrets``."""
    stamp, dot, signature = token.partition(".")
    if not dot or len(signature) != 64 or any(c not in "0123456789abcdef" for c in signature):
        raise Unauthorized("malformed bearer token")
    _check_stamp(stamp, skew_seconds, now_ms() if at_ms is None else at_ms)
    if not _matches_any(secrets, stamp.encode(), signature):
        raise Unauthorized("invalid bearer token")


@dataclass(frozen=True)
class ParsedSignature:
    stamp: str
    signature: str
    nonce: str = ""


def parse_signature_header(value: str) -> ParsedSignature:
    """Parse ``t=<ms>,v1=<hex>``; raise ``Unauthorized`` when malformed."""
    parts: dict[str, str] = {}
    for item in value.split(","):
        key, eq, val = item.strip().partition("=")
        if not eq or key in parts:
            raise Unauthorized("malformed signature header")
        parts[key] = val
    stamp, signature, nonce = parts.get("t", ""), parts.get("v1", ""), parts.get("n", "")
    if not stamp.isdigit() or len(signature) != 64 or any(c not in "0123456789abcdef" for c in signature):
        raise Unauthorized("malformed signature header")
    if len(nonce) > 64 or not all(c.isalnum() or c in "-_" for c in nonce):
        raise Unauthorized("malformed signature header")
    return ParsedSignature(stamp, signature, nonce)


class ReplayCache:
    """Remembers used signatures until they expire; bounded in size.

    Per process: replicas behind one load balancer each keep their own cache,
    which still refuses a replay to the same replica. A replay to another
    replica would need a shared store; the skew window bounds the exposure.
    """

    def __init__(self, ttl_seconds: int, max_entries: int = 100_000) -> None:
        self._ttl_ms = ttl_seconds * 2 * 1000
        self._max = max_entries
        self._seen: OrderedDict[str, int] = OrderedDict()

    def add(self, signature: str, at_ms: int) -> bool:
        """Record ``signature``; False when it was already used (a replay)."""
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > at_ms and len(self._seen) < self._max:
                break
            del self._seen[oldest]
        if signature in self._seen:
            return False
        self._seen[signature] = at_ms + self._ttl_ms
        return True


class RequestVerifier:
    """Verifies inbound credentials for one service instance."""

    def __init__(self, secrets: Sequence[bytes], skew_seconds: int, mode: str) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        self.secrets = list(secrets)
        self.skew_seconds = skew_seconds
        self.mode = mode
        self.replays = ReplayCache(skew_seconds)

    def check_signature_header(self, header: str, method: str, path_query: str, body_sha256: str) -> None:
        """Verify a signed request against its body hash and record it against replay."""
        parsed = parse_signature_header(header)
        at = now_ms()
        _check_stamp(parsed.stamp, self.skew_seconds, at)
        message = signing_string(parsed.stamp, method, path_query, body_sha256, parsed.nonce)
        if not _matches_any(self.secrets, message, parsed.signature):
            raise Unauthorized("invalid request signature")
        if not self.replays.add(parsed.signature, at):
            raise Unauthorized("replayed request")

    def check_query_token(self, token: str, path: str) -> None:
        """Verify a ``make_query_token`` token for ``path`` (a URL a browser may hold briefly)."""
        stamp, dot, signature = token.partition(".")
        if not dot or len(signature) != 64:
            raise Unauthorized("malformed access token")
        _check_stamp(stamp, QUERY_TOKEN_SECONDS, now_ms())
        if not _matches_any(self.secrets, _query_message(stamp, path), signature):
            raise Unauthorized("invalid access token")

    def check_bearer(self, authorization: str | None) -> None:
        """Verify the ``Authorization: Bearer`` header (token mode)."""
        if not authorization:
            raise Unauthorized("missing credentials")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected a Bearer token")
        verify_token(token.strip(), self.secrets, self.skew_seconds)
