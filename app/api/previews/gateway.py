"""The preview proxy's front door: an ASGI middleware in front of the API's authentication.

Two URL forms reach a sandbox port:

- path form ``/p/<token>/<path>``: the token in the path is the credential, on any host;
- host form ``<port>-<preview id>.<SANDBOX_PREVIEW_DOMAIN>/<path>``, for apps that
  assume they live at ``/``: the token comes once as ``?preview_token=`` (answered with
  a redirect that sets an HttpOnly, SameSite=Lax, host-only cookie, so it is scoped to
  that one preview and leaves the address bar), or as ``X-Preview-Token`` from API
  clients. Every host under the preview domain is the proxy's: the API is never served
  there, so a sandbox app can never read an API caller's cookies or be mistaken for it.

These requests never carry the API's credentials and never reach its routes;
everything else passes through to the API untouched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from app.api.errors import error_response
from app.api.previews.headers import (
    COOKIE_NAME,
    TOKEN_HEADER,
    Headers,
    check_framing,
    header,
    preview_cookie,
    token_query,
    upstream_request_headers,
    without_token_query,
)
from app.api.previews.relay import Message, Receive, Send, relay_http, relay_websocket
from app.errors import PayloadTooLarge, PreviewNotFound, SandboxControlError
from app.logging import get_logger
from app.services.container import Services
from app.services.previews import PreviewAccess

Scope = dict[str, Any]

log = get_logger("previews")

_PATH_FORM = re.compile(r"^/p/([^/]*)(/.*)?$", re.DOTALL)
_HOST_LABEL = re.compile(r"^([0-9]{1,5})-(pv[0-9a-f]{20})$")
#: What the request log and metrics see as the route: never the token. Quiet: a dev server's
#: page loads dozens of assets; they are counted in the metrics, not logged one by one.
_PATH_ROUTE = SimpleNamespace(path="/p/{token}/{path}", quiet=True)
_HOST_ROUTE = SimpleNamespace(path="{port}-{preview}.<preview domain>/{path}", quiet=True)


@dataclass(frozen=True)
class _Target:
    """A request for the proxy: its token (if any), the host-form preview (if any), and what to forward."""

    token: str | None
    host: tuple[int, str] | None
    #: Path and query as the sandbox gets them.
    forward: bytes
    #: The token came in the query string (host form): answer with the cookie.
    token_in_query: bool = False


class PreviewGateway:
    """Serves path-form and host-form preview requests; passes every other request on."""

    def __init__(self, app: Any, *, domain: str | None, cookie_secure: bool, max_upload_bytes: int) -> None:
        self.app = app
        self.domain = domain.lower() if domain else None
        self.cookie_secure = cookie_secure
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            target = self._match(scope)
        except SandboxControlError as exc:
            await _refuse(scope, receive, send, exc)
            return
        if target is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _HOST_ROUTE if target.host is not None else _PATH_ROUTE
        try:
            await self._serve(scope, receive, send, target)
        except SandboxControlError as exc:
            if exc.status_code >= 500:
                log.info("preview.failed", code=exc.code, error=exc.message)
            await _refuse(scope, receive, send, exc)

    # -- matching ----------------------------------------------------------------

    def _match(self, scope: Scope) -> _Target | None:
        headers: Headers = scope.get("headers", [])
        query: bytes = scope.get("query_string", b"")
        if self.domain is not None:
            host = (header(headers, b"host") or "").lower().rsplit(":", 1)[0].rstrip(".")
            if host == self.domain or host.endswith("." + self.domain):
                match = _HOST_LABEL.match(host[: -len(self.domain) - 1])
                if match is None or not 1 <= int(match.group(1)) <= 65535:
                    raise PreviewNotFound("no preview at this host name")
                raw = scope.get("raw_path") or scope["path"].encode()
                stripped = without_token_query(query)
                in_query = token_query(query)
                token = in_query or header(headers, TOKEN_HEADER) or preview_cookie(headers)
                forward = raw + (b"?" + stripped if stripped else b"")
                return _Target(token, (int(match.group(1)), match.group(2)), forward, in_query is not None)
        path: str = scope["path"]
        if not path.startswith("/p/"):
            return None
        match = _PATH_FORM.match(path)
        if match is None or not match.group(1):
            raise PreviewNotFound("no preview at this path")
        raw = scope.get("raw_path") or path.encode()
        rest = raw.split(b"/", 3)[3] if raw.count(b"/") >= 3 else None
        if rest is None:
            return _Target(match.group(1), None, b"")  # /p/<token>: redirected to /p/<token>/ once checked
        return _Target(match.group(1), None, b"/" + rest + (b"?" + query if query else b""))

    # -- serving -----------------------------------------------------------------

    async def _serve(self, scope: Scope, receive: Receive, send: Send, target: _Target) -> None:
        services: Services = scope["app"].state.services
        access = await services.previews.authorize(target.token, target.host)
        if not target.forward and scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            await _redirect(send, scope["path"] + "/" + (f"?{query}" if query else ""), 308)
            return
        headers: Headers = scope.get("headers", [])
        cookie = self._cookie(target.token, access) if target.token_in_query else None
        if cookie is not None and scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            # Take the token out of the address bar (and of Referer headers) at once.
            await _redirect(send, target.forward.decode("latin-1"), 302, [(b"set-cookie", cookie)])
            return
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        client = scope.get("client")
        forwarded = upstream_request_headers(
            headers,
            client=client[0] if client else None,
            host=header(headers, b"host") or "",
            scheme=scheme,
            chunked=scope["type"] == "http" and check_framing(headers),
            websocket=scope["type"] == "websocket",
        )
        target_path = target.forward.decode("latin-1") or "/"
        if scope["type"] == "websocket":
            await relay_websocket(
                receive, send, services.preview_upstreams, access, target_path, forwarded,
                scope.get("subprotocols", []), header(headers, b"origin"),
                lambda: services.previews.authorize(target.token, target.host),
                lambda exc: refuse_websocket(scope, receive, send, exc),
            )  # fmt: skip
            return
        declared = header(headers, b"content-length")
        if declared is not None and int(declared) > self.max_upload_bytes:
            raise PayloadTooLarge(f"request body exceeds {self.max_upload_bytes} bytes")
        has_body = (declared is not None and int(declared) > 0) or any(k == b"transfer-encoding" for k, _ in forwarded)
        await relay_http(
            receive, send, services.preview_upstreams, access, scope["method"], target_path, forwarded, has_body,
            self.max_upload_bytes, [(b"set-cookie", cookie)] if cookie is not None else (),
        )  # fmt: skip

    def _cookie(self, token: str | None, access: PreviewAccess) -> bytes | None:
        if token is None:
            return None
        max_age = max(0, int(access.preview.expires_at.timestamp() - time.time()))
        secure = "; Secure" if self.cookie_secure else ""
        return f"{COOKIE_NAME}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}".encode()


async def _redirect(send: Send, location: str, status: int, extra: Headers | None = None) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: SandboxControlError) -> None:
    """Our error envelope, for a WebSocket before the upgrade (``refuse_websocket``)."""
    if scope["type"] == "websocket":
        message: Message = await receive()
        if message["type"] == "websocket.connect":
            await refuse_websocket(scope, receive, send, exc)
        return
    await error_response(exc)(scope, receive, send)


async def refuse_websocket(scope: Scope, receive: Receive, send: Send, exc: SandboxControlError) -> None:
    """Refuse a WebSocket whose connect was received, before the upgrade.

    With the ASGI denial-response extension (uvicorn has it) the client gets the real
    status and our error envelope, as an HTTP request would: a sandbox port that does
    not answer is a 502, not the bare 403 a close before the upgrade turns into (which
    reads as a token problem). Without it, a close with code 4000 + the status.
    """
    if "websocket.http.response" in scope.get("extensions", {}):
        await error_response(exc)(scope, receive, send)
        return
    await send({"type": "websocket.close", "code": 4000 + exc.status_code, "reason": exc.message[:120]})
