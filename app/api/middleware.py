"""ASGI middleware: request context and metrics, then auth and body limits.

Both run before FastAPI parses a body, so an unauthenticated caller learns
nothing about the API's validation, and an oversized body is refused before
it is read whole.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from app.api.errors import DAYTONA_PREFIX, error_body, error_response
from app.auth import CONTENT_SHA256_HEADER, EMPTY_BODY_SHA256, QUERY_TOKEN_PARAM, SIGNATURE_HEADER, RequestVerifier
from app.errors import PayloadTooLarge, SandboxControlError, Unauthorized
from app.logging import get_logger, request_id_var
from app.metrics import Metrics
from app.schemas.sandboxes import JSON_ESCAPE_FACTOR, MAX_STDIN_BYTES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without credentials (liveness, readiness, metrics, docs).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/health", "/docs", "/openapi.json"})
INTERNAL_ERROR_BODY = json.dumps(error_body("internal error", "internal")).encode()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

log = get_logger("http")


def header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", ()):
        if key.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _query_param(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def is_streamed_upload(scope: Scope) -> bool:
    """File uploads stream up to the upload limit; everything else is small JSON."""
    return scope.get("method") == "PUT" and str(scope.get("path", "")).endswith("/files")


def body_limit(scope: Scope, *, json_bytes: int, upload_bytes: int) -> int:
    """The body limit of a request: uploads stream big files; exec carries up to 8 MiB of stdin in its JSON.

    An exec body is allowed what the largest stdin can take once JSON-escaped, so the
    model's stdin limit, not the body limit, is what refuses a too large stdin.
    """
    if is_streamed_upload(scope):
        return upload_bytes
    if scope.get("method") == "POST" and str(scope.get("path", "")).endswith("/exec"):
        return json_bytes + MAX_STDIN_BYTES * JSON_ESCAPE_FACTOR
    return json_bytes


class RequestContextMiddleware:
    """Binds a request id, logs one line per request, records metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header(scope, "x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else secrets.token_hex(8)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Anything unexpected ends here, once: logged with its trace and
            # answered as a bare 500 envelope (never a trace to the caller).
            log.error("request.crashed", error_type=type(exc).__name__, exc_info=exc)
            if status == 500 and not response_started:
                await send_with_id(
                    {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
                )
                await send_with_id({"type": "http.response.body", "body": INTERNAL_ERROR_BODY})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.request_latency.labels(method, template).observe(elapsed)
            if template not in ("/healthz", "/metrics") and not getattr(route, "quiet", False):
                log.info("request", method=method, route=template, status=status, ms=round(elapsed * 1000, 1))
            request_id_var.reset(token)


class AuthMiddleware:
    """Verifies credentials and enforces body size limits before any parsing."""

    def __init__(self, app: ASGIApp, verifier: RequestVerifier, max_json_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.verifier = verifier
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope.get("path", "")).startswith(DAYTONA_PREFIX):
            # The Daytona-compatible API has keys of its own (``app.api.daytona.auth``); ours never open it.
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._authenticate(scope, receive)
        except SandboxControlError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: the headers of any request, or a short-lived signed query parameter.

        Refused before the upgrade (close code 4401: the client sees HTTP 403).
        """
        try:
            token = _query_param(scope, QUERY_TOKEN_PARAM)
            signature = header(scope, SIGNATURE_HEADER)
            if token is not None:
                self.verifier.check_query_token(token, scope["path"])
            elif signature is not None:
                path_query = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
                if scope.get("query_string"):
                    path_query += "?" + scope["query_string"].decode("latin-1")
                self.verifier.check_signature_header(signature, "GET", path_query, EMPTY_BODY_SHA256)
            elif self.verifier.mode == "signed":
                raise Unauthorized("signed requests are required (X-Sandbox-Signature or access_token)")
            else:
                self.verifier.check_bearer(header(scope, "authorization"))
        except SandboxControlError as exc:
            log.info("websocket.refused", path=scope["path"], reason=exc.message)
            await send({"type": "websocket.close", "code": 4401, "reason": exc.message[:100]})
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, receive: Receive) -> Receive:
        limit = body_limit(scope, json_bytes=self.max_json_bytes, upload_bytes=self.max_upload_bytes)
        declared = header(scope, "content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        signature = header(scope, SIGNATURE_HEADER)
        if signature is None:
            if self.verifier.mode == "signed":
                raise Unauthorized("signed requests are required (X-Sandbox-Signature)")
            self.verifier.check_bearer(header(scope, "authorization"))
            return limited_receive(receive, limit)
        path_query = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path_query += "?" + scope["query_string"].decode("latin-1")
        content_hash = header(scope, CONTENT_SHA256_HEADER)
        if content_hash is not None:
            # Streamed body: trust the declared hash for the signature now and
            # prove it when the last byte arrives (the handler then aborts).
            self.verifier.check_signature_header(signature, scope["method"], path_query, content_hash.lower())
            return _hash_checked(limited_receive(receive, limit), content_hash.lower())
        body = await _read_body(receive, limit)
        self.verifier.check_signature_header(signature, scope["method"], path_query, hashlib.sha256(body).hexdigest())
        return _replay(body, receive)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Unauthorized("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, upstream: Receive) -> Receive:
    """Hand the buffered body to the app once, then pass through (to see a real disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await upstream()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``PayloadTooLarge`` once more than ``limit`` body bytes came."""

    size = 0

    async def receive_limited() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        return message

    return receive_limited


def _hash_checked(receive: Receive, expected: str) -> Receive:
    digest = hashlib.sha256()

    async def receive_checked() -> Message:
        message = await receive()
        digest.update(message.get("body", b""))
        finished = message["type"] == "http.request" and not message.get("more_body", False)
        if finished and digest.hexdigest() != expected:
            raise Unauthorized("body does not match the signed X-Content-SHA256")
        return message

    return receive_checked
