"""A prompt's attachments as OpenCode file parts: ``{"type": "file", "mime", "url", "filename"}``.

What control planes send, and what each becomes:

* ``content`` (base64, with ``mimeType``/``mime`` and ``name``) → a ``data:`` URL;
* ``url``: ``data:``, ``http://`` or ``https://`` → passed on as is (OpenCode expands data
  URLs; web URLs go to the model provider);
* ``uploadId`` → fetched from the control plane
  (``GET {control_plane}/sessions/{session_id}/uploads/{id}``, the sandbox token as bearer)
  and passed on as a ``data:`` URL.

Anything else (no content, another URL scheme such as ``file:``, a failed or oversized
download) is skipped with a warning in the log: an attachment never fails its prompt.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import PurePosixPath
from urllib.parse import quote, urlsplit

import httpx

from sandbox_runtime.bridge.protocol import PromptAttachment
from sandbox_runtime.jsonlog import JsonLogger

MAX_ATTACHMENT_BYTES = 10 << 20
"""Largest attachment passed on (decoded size); models refuse far smaller ones anyway."""
DEFAULT_MIME = "application/octet-stream"
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,200}\Z")
_DOWNLOAD_TIMEOUT = 120.0

FetchUpload = Callable[[str], Awaitable[bytes | None]]
"""Downloads one upload by id; None when it cannot (refused, too large, unreachable)."""


class UploadFetcher:
    """Downloads a session's uploads from the control plane, bounded in size."""

    def __init__(
        self, control_plane_url: str, session_id: str, token: str, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self._base = f"{control_plane_url.rstrip('/')}/sessions/{quote(session_id, safe='')}/uploads/"
        self._token = token
        self._http = http

    async def __call__(self, upload_id: str) -> bytes | None:
        """The upload's bytes; None when the id is malformed, or the download fails or is too large."""
        if not _UPLOAD_ID.match(upload_id):
            return None
        headers = {"Authorization": f"Bearer {self._token}"}
        client = self._http or httpx.AsyncClient(timeout=_DOWNLOAD_TIMEOUT, follow_redirects=False)
        try:
            async with client.stream("GET", self._base + upload_id, headers=headers) as response:
                if response.status_code != 200:
                    return None
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ATTACHMENT_BYTES:
                        return None
                return bytes(data)
        except httpx.HTTPError:
            return None
        finally:
            if self._http is None:
                await client.aclose()


def _name_of(attachment: PromptAttachment) -> str:
    if attachment.name or attachment.filename:
        return str(attachment.name or attachment.filename)
    if attachment.url and not attachment.url.startswith("data:"):
        return PurePosixPath(urlsplit(attachment.url).path).name or "attachment"
    return "attachment"


def _mime_of(attachment: PromptAttachment, name: str) -> str:
    if attachment.mime_type or attachment.mime:
        return str(attachment.mime_type or attachment.mime)
    if attachment.url and attachment.url.startswith("data:"):
        declared = attachment.url[5:].split(",", 1)[0].split(";", 1)[0]
        if declared:
            return declared
    return mimetypes.guess_type(name)[0] or DEFAULT_MIME


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


async def _url_of(attachment: PromptAttachment, mime: str, fetch_upload: FetchUpload) -> tuple[str | None, str]:
    """(the part's URL, why there is none)."""
    if attachment.content:
        try:
            decoded = base64.b64decode(attachment.content, validate=True)
        except (binascii.Error, ValueError):
            return None, "content is not base64"
        if len(decoded) > MAX_ATTACHMENT_BYTES:
            return None, "too large"
        return _data_url(mime, decoded), ""
    if attachment.url:
        scheme = attachment.url.split(":", 1)[0].lower()
        if scheme not in ("data", "http", "https"):
            return None, f"URL scheme {scheme!r} is not passed on"
        if scheme == "data" and len(attachment.url) > MAX_ATTACHMENT_BYTES * 4 // 3 + 1024:
            return None, "too large"
        return attachment.url, ""
    if attachment.upload_id:
        data = await fetch_upload(attachment.upload_id)
        return (_data_url(mime, data), "") if data is not None else (None, "the upload could not be fetched")
    return None, "neither content, url nor uploadId"


async def file_parts(
    attachments: Sequence[PromptAttachment], *, fetch_upload: FetchUpload, log: JsonLogger
) -> list[dict[str, str]]:
    """OpenCode file parts for ``attachments``, in order; unusable ones are skipped (and logged)."""
    parts: list[dict[str, str]] = []
    for index, attachment in enumerate(attachments):
        name = _name_of(attachment)
        mime = _mime_of(attachment, name)
        url, reason = await _url_of(attachment, mime, fetch_upload)
        if url is None:
            log.warning("prompt.attachment_skipped", index=index, filename=name, reason=reason)
            continue
        parts.append({"type": "file", "mime": mime, "url": url, "filename": name})
    return parts
