"""Preview URLs: make, list and revoke them, and decide whether a request may pass the proxy.

A preview is a row (``PreviewStore``) plus a token signed over it
(``tokens``). A request is let through when its token parses, has not
expired, verifies against a live row, names the preview of the host it came
to (host form), and the sandbox is running. Those lookups are cached for
``CHECK_CACHE_SECONDS`` per preview, so a proxied request does not pay a
database round trip; a revoke on another replica takes effect within that time
(on this one, at once). A token's signature, once verified, is remembered (it
cannot become false), but the row is still checked for every request.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.errors import (
    PreviewNotFound,
    PreviewTokenExpired,
    PreviewTokenInvalid,
    PreviewTokenMismatch,
    SandboxControlError,
)
from app.logging import get_logger
from app.providers.base import Provider
from app.schemas.previews import CreatePreviewRequest, PreviewView
from app.services.previews.tokens import PreviewSigner, parse_token
from app.settings import Settings
from app.storage.state.previews import PreviewRecord, PreviewStore
from app.storage.state.sandboxes import SandboxRecord
from app.storage.state.times import utcnow

log = get_logger("previews")

#: How long one replica trusts a preview check (row alive, sandbox running).
CHECK_CACHE_SECONDS = 2.0
#: Cached checks kept at most (oldest dropped first).
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class PreviewAccess:
    """A request's right to pass: the preview and the provider ref of its running sandbox."""

    preview: PreviewRecord
    ref: str


def new_preview_id() -> str:
    return "pv" + secrets.token_hex(10)


class PreviewService:
    """Previews of running sandboxes; ``authorize`` guards the proxy."""

    def __init__(
        self,
        settings: Settings,
        store: PreviewStore,
        signer: PreviewSigner,
        provider: Provider,
        running: Callable[[str], Awaitable[SandboxRecord]],
        get: Callable[[str], Awaitable[SandboxRecord]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.signer = signer
        self.provider = provider
        self._running = running
        self._get = get
        self._checked: dict[str, tuple[float, PreviewAccess]] = {}
        #: Tokens whose signature verified, with the (sandbox, port, expiry) it was checked for.
        #: A signature stays true; whether its preview still stands is ``_check``'s, every time.
        self._verified: dict[str, tuple[str, int, int]] = {}

    # -- the API ------------------------------------------------------------

    async def create(self, sandbox_id: str, request: CreatePreviewRequest, base_url: str) -> PreviewView:
        """A new preview of ``request.port``; the sandbox must run and its provider reach ports."""
        sandbox = await self._running(sandbox_id)
        assert sandbox.provider_object_id is not None
        # Asked now so an unsupported provider is a 501 here, not on the first visit.
        await self.provider.port_endpoint(sandbox.provider_object_id, request.port)
        now = utcnow().replace(microsecond=0)
        lifetime = min(request.expires_in_seconds or self.settings.preview_default_ttl_seconds,
                       self.settings.preview_max_ttl_seconds)  # fmt: skip
        expires_at = now + timedelta(seconds=lifetime)
        if sandbox.expires_at is not None:
            expires_at = min(expires_at, sandbox.expires_at.replace(microsecond=0))
        record = PreviewRecord(new_preview_id(), sandbox.id, request.port, request.public, now, expires_at)
        await self.store.add(record)
        log.info("preview.created", sandbox_id=sandbox.id, preview_id=record.id, port=record.port)
        return self.view(record, base_url)

    async def list(self, sandbox_id: str, base_url: str) -> list[PreviewView]:
        sandbox = await self._get(sandbox_id)
        return [self.view(record, base_url) for record in await self.store.list(sandbox.id)]

    async def revoke(self, sandbox_id: str, preview_id: str) -> None:
        sandbox = await self._get(sandbox_id)
        record = await self.store.get(preview_id)
        if record is None or record.sandbox_id != sandbox.id or not await self.store.delete(preview_id):
            raise PreviewNotFound(f"preview {preview_id!r} not found", preview_id=preview_id)
        self._checked.pop(preview_id, None)
        log.info("preview.revoked", sandbox_id=sandbox.id, preview_id=preview_id)

    async def forget_sandbox(self, sandbox_id: str) -> None:
        """The sandbox stopped or was deleted: its previews die with it (and stay dead on a restart)."""
        count = await self.store.delete_sandbox(sandbox_id)
        for preview_id, (_, access) in list(self._checked.items()):
            if access.preview.sandbox_id == sandbox_id:
                self._checked.pop(preview_id, None)
        if count:
            log.info("preview.sandbox_halted", sandbox_id=sandbox_id, revoked=count)

    async def expire(self) -> dict[str, int]:
        return {"expired": await self.store.expire()}

    def token(self, record: PreviewRecord) -> str:
        return self.signer.token(record.id, record.sandbox_id, record.port, int(record.expires_at.timestamp()))

    def view(self, record: PreviewRecord, base_url: str) -> PreviewView:
        token = self.token(record)
        base = (self.settings.public_url or base_url).rstrip("/")
        host_url = None
        if self.settings.preview_domain:
            scheme = base.split("://", 1)[0] if self.settings.public_url else "https"
            host_url = f"{scheme}://{record.port}-{record.id}.{self.settings.preview_domain}/?preview_token={token}"
        return PreviewView(
            id=record.id,
            sandbox_id=record.sandbox_id,
            port=record.port,
            public=record.public,
            url=f"{base}/p/{token}/",
            host_url=host_url,
            token=token,
            created_at=record.created_at,
            expires_at=record.expires_at,
        )

    # -- the proxy's gate ------------------------------------------------------

    async def authorize(self, token: str | None, host: tuple[int, str] | None = None) -> PreviewAccess:
        """May a request with ``token`` (to host-form preview ``host`` = (port, id), if any) pass?

        Raises ``PreviewTokenInvalid``/``PreviewTokenExpired`` (401), ``PreviewTokenMismatch``
        (403: a token of another preview), ``PreviewNotFound`` (404: revoked or gone).
        """
        if token is None:
            if host is None:
                raise PreviewTokenInvalid("a preview token is required")
            access = await self._check(host[1])
            if not access.preview.public:
                raise PreviewTokenInvalid("this preview needs its token (?preview_token=, cookie or X-Preview-Token)")
            return self._same_port(access, host)
        parsed = parse_token(token)
        if parsed.expires <= time.time():
            raise PreviewTokenExpired("preview token expired")
        access = await self._check(parsed.preview_id)
        preview = access.preview
        claims = (preview.sandbox_id, preview.port, int(preview.expires_at.timestamp()))
        if parsed.expires != claims[2]:
            raise PreviewTokenInvalid("preview token signature does not verify")
        if self._verified.get(token) != claims:
            if not self.signer.verify(parsed, preview.sandbox_id, preview.port):
                raise PreviewTokenInvalid("preview token signature does not verify")
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = claims
        if host is not None and host[1] != preview.id:
            raise PreviewTokenMismatch("this token belongs to another preview")
        return self._same_port(access, host)

    @staticmethod
    def _same_port(access: PreviewAccess, host: tuple[int, str] | None) -> PreviewAccess:
        if host is not None and host[0] != access.preview.port:
            raise PreviewTokenMismatch(f"preview {access.preview.id} is of another port")
        return access

    async def _check(self, preview_id: str) -> PreviewAccess:
        now = time.monotonic()
        cached = self._checked.get(preview_id)
        if cached is not None and now - cached[0] < CHECK_CACHE_SECONDS:
            access = cached[1]
        else:
            access = await self._load(preview_id)
            if len(self._checked) >= _CACHE_LIMIT:
                self._checked.pop(next(iter(self._checked)))
            self._checked[preview_id] = (now, access)
        if access.preview.expires_at <= datetime.now(UTC):
            raise PreviewTokenExpired("preview expired")
        return access

    async def _load(self, preview_id: str) -> PreviewAccess:
        record = await self.store.get(preview_id)
        if record is None:
            raise PreviewNotFound("preview not found (revoked, expired or gone with its sandbox)")
        try:
            sandbox = await self._running(record.sandbox_id)
        except SandboxControlError as exc:
            raise PreviewNotFound(f"the preview's sandbox is not available: {exc.message}") from None
        assert sandbox.provider_object_id is not None
        return PreviewAccess(record, sandbox.provider_object_id)
