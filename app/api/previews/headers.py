"""What of a proxied request and its answer crosses the proxy.

Hop-by-hop headers (RFC 9110 7.6.1) and every header the ``Connection``
header names belong to one connection and are dropped both ways; the preview's
own credentials (cookie, ``X-Preview-Token``, ``?preview_token=``) never
reach the sandbox; a request framed twice (``Content-Length`` and
``Transfer-Encoding``) is refused, since the two ends could split it
differently (request smuggling).
"""

from __future__ import annotations

from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

from app.errors import BadRequest

Headers = list[tuple[bytes, bytes]]

#: The host-form preview cookie (HttpOnly, host-only: scoped to one preview's host).
COOKIE_NAME = "sandbox_preview"
TOKEN_HEADER = b"x-preview-token"
TOKEN_QUERY = "preview_token"
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection",
     b"proxy-authorization", b"proxy-authenticate"}
)  # fmt: skip
#: Set by the proxy itself; a client's own would be believed by the app.
_FORWARDED = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
#: Headers a WebSocket client library sets itself on the upstream handshake.
_WEBSOCKET_OWN = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
     b"sec-websocket-accept", b"origin"}
)  # fmt: skip


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _connection_named(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named |= {part.strip().lower() for part in value.split(b",") if part.strip()}
    return named


def check_framing(headers: Headers) -> bool:
    """Whether the request body is chunked; ``BadRequest`` for an ambiguous framing."""
    lengths = {value.strip() for key, value in headers if key.lower() == b"content-length"}
    encodings = [value.strip().lower() for key, value in headers if key.lower() == b"transfer-encoding"]
    if encodings and lengths:
        raise BadRequest("both Content-Length and Transfer-Encoding: refused (request smuggling)", field="headers")
    if len(lengths) > 1 or any(not length.isdigit() for length in lengths):
        raise BadRequest("conflicting or invalid Content-Length", field="headers")
    if encodings and encodings != [b"chunked"]:
        raise BadRequest("only Transfer-Encoding: chunked is accepted", field="headers")
    return bool(encodings)


def without_preview_cookie(value: str) -> str | None:
    """A ``Cookie`` header minus the preview cookie; None when nothing is left."""
    kept = [part.strip() for part in value.split(";") if part.strip() and part.split("=", 1)[0].strip() != COOKIE_NAME]
    return "; ".join(kept) or None


def preview_cookie(headers: Headers) -> str | None:
    value = header(headers, b"cookie")
    if value is None or COOKIE_NAME not in value:
        return None
    try:
        jar: SimpleCookie = SimpleCookie(value)
    except CookieError:
        return None
    morsel = jar.get(COOKIE_NAME)
    return morsel.value if morsel is not None else None


def upstream_request_headers(
    headers: Headers, *, client: str | None, host: str, scheme: str, chunked: bool, websocket: bool = False
) -> Headers:
    """The request's headers as the sandbox gets them: no hop-by-hop, no preview credentials, our X-Forwarded-*."""
    dropped = HOP_BY_HOP | _connection_named(headers) | _FORWARDED | {b"host", TOKEN_HEADER}
    if websocket:
        dropped |= _WEBSOCKET_OWN
    kept: Headers = []
    for key, value in headers:
        name = key.lower()
        if name in dropped:
            continue
        if name == b"cookie":
            rest = without_preview_cookie(value.decode("latin-1"))
            if rest is not None:
                kept.append((b"cookie", rest.encode("latin-1")))
            continue
        kept.append((name, value))
    if chunked:
        kept.append((b"transfer-encoding", b"chunked"))
    kept.append((b"x-forwarded-host", host.encode("latin-1")))
    kept.append((b"x-forwarded-proto", scheme.encode()))
    if client:
        kept.append((b"x-forwarded-for", client.encode()))
    return kept


def client_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The sandbox's answer headers as the client gets them: no hop-by-hop, no overwrite of the preview cookie."""
    headers = list(headers)
    dropped = HOP_BY_HOP | _connection_named(headers)
    kept: Headers = []
    for key, value in headers:
        name = key.lower()
        if name in dropped:
            continue
        if name == b"set-cookie" and value.split(b"=", 1)[0].strip() == COOKIE_NAME.encode():
            continue
        kept.append((name, value))
    return kept


def without_token_query(query: bytes) -> bytes:
    """The query string minus ``preview_token`` (kept byte for byte when it has none)."""
    if TOKEN_QUERY.encode() not in query:
        return query
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, v) for k, v in pairs if k != TOKEN_QUERY]).encode("latin-1")


def token_query(query: bytes) -> str | None:
    if TOKEN_QUERY.encode() not in query:
        return None
    values = [v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == TOKEN_QUERY]
    return values[0] if values else None
