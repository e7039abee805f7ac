"""Bearer keys of the Daytona-compatible API, checked before anything is parsed.

Daytona's SDK sends ``Authorization: Bearer <api key>``; the key must be one of
``SANDBOX_DAYTONA_API_KEYS``. With none configured the API is closed (401 for
every request). These keys open ``/daytona/...`` only, and our HMAC secrets
never open it: ``AuthMiddleware`` hands these paths over untouched.
"""

from __future__ import annotations

import hmac

from app.api.errors import DAYTONA_PREFIX, daytona_error, daytona_error_of
from app.api.middleware import ASGIApp, Receive, Scope, Send, header, limited_receive
from app.errors import PayloadTooLarge
from app.settings import ConfigError

#: Requests whose body is a file (multipart), allowed the upload limit; the rest is JSON.
_UPLOAD_SUFFIXES = ("/files/bulk-upload", "/files/upload", "/files/upload-v2")


def check_keys(keys: list[bytes], api_secrets: list[bytes]) -> list[bytes]:
    """Refuse a Daytona key that is also an API secret: each must open one API only."""
    if set(keys) & set(api_secrets):
        raise ConfigError("a SANDBOX_DAYTONA_API_KEYS key equals SANDBOX_API_SECRET; use distinct secrets")
    return keys


class DaytonaAuthMiddleware:
    """Authenticates ``/daytona/`` requests by bearer key and bounds their bodies; other paths pass."""

    def __init__(self, app: ASGIApp, keys: list[bytes], max_json_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes

    def _authorized(self, scope: Scope) -> bool:
        value = header(scope, "authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        # Every key is compared (constant time each), so timing tells nothing about which matched.
        matched = [hmac.compare_digest(given, key) for key in self.keys]
        return any(matched)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] not in ("http", "websocket") or not path.startswith(DAYTONA_PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Refused at the handshake (the upgrade answers 403); the SDK sends its key as a header here too.
            if not self._authorized(scope):
                await send({"type": "websocket.close", "code": 4401, "reason": "invalid or missing API key"})
                return
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        if not self._authorized(scope):
            answer = daytona_error(401, "invalid or missing API key", method=method, path=path)
            await answer(scope, receive, send)
            return
        limit = self.max_upload_bytes if path.endswith(_UPLOAD_SUFFIXES) else self.max_json_bytes
        declared = header(scope, "content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            too_large = PayloadTooLarge(f"request body exceeds {limit} bytes")
            await daytona_error_of(too_large, method=method, path=path)(scope, receive, send)
            return
        await self.app(scope, limited_receive(receive, limit), send)
