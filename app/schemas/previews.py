"""``/v1/sandboxes/{id}/previews``: signed, expiring URLs that reach one port of a sandbox."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from app.schemas.common import StrictModel

#: A preview id: lower-case so it can be part of a DNS name (host-form URLs).
PREVIEW_ID_PATTERN = r"^pv[0-9a-f]{20}$"
PreviewId = Annotated[str, Field(pattern=PREVIEW_ID_PATTERN, description="preview id")]


class CreatePreviewRequest(StrictModel):
    """``POST /v1/sandboxes/{id}/previews``."""

    port: int = Field(ge=1, le=65535, description="TCP port inside the sandbox")
    #: Default ``SANDBOX_PREVIEW_DEFAULT_TTL``; at most ``SANDBOX_PREVIEW_MAX_TTL`` (and never past the sandbox).
    expires_in_seconds: int | None = Field(default=None, ge=1, description="lifetime of the preview")
    #: Host-form requests need no token; the path form always carries one in its URL.
    public: bool = False


class PreviewView(StrictModel):
    """A preview. ``token`` is shown to the HMAC-authenticated API only (create and list):
    it is derived from the row, so listing can hand it out again without storing it."""

    id: str
    sandbox_id: str
    port: int
    public: bool
    #: Path form: ``<base>/p/<token>/``; works on any host name.
    url: str
    #: Host form ``<scheme>://<port>-<id>.<SANDBOX_PREVIEW_DOMAIN>/?preview_token=<token>``; None when unset.
    host_url: str | None = None
    token: str
    created_at: datetime
    expires_at: datetime


class PreviewList(StrictModel):
    previews: list[PreviewView]
