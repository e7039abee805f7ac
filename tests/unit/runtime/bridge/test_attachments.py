"""Attachments become OpenCode file parts; uploads are fetched from the control plane (MockTransport)."""

from __future__ import annotations

import base64
import io
import json

import httpx

from sandbox_runtime.bridge.attachments import MAX_ATTACHMENT_BYTES, UploadFetcher, file_parts
from sandbox_runtime.bridge.protocol import PromptAttachment
from sandbox_runtime.jsonlog import JsonLogger

PNG = b"\x89PNG\r\n\x1a\nfake"


def _attachments(*items: dict[str, object]) -> list[PromptAttachment]:
    return [PromptAttachment.model_validate(item) for item in items]


async def test_each_shape_becomes_a_file_part_and_the_rest_is_skipped() -> None:
    uploads = {"up-1": PNG}

    async def fetch(upload_id: str) -> bytes | None:
        return uploads.get(upload_id)

    stream = io.StringIO()
    parts = await file_parts(
        _attachments(
            {"type": "image", "name": "shot.png", "mimeType": "image/png", "content": base64.b64encode(PNG).decode()},
            {"url": "https://example.com/docs/spec.pdf"},
            {"name": "note.txt", "url": "data:text/plain;base64,aGk="},
            {"name": "diagram.png", "uploadId": "up-1"},
            {"name": "gone.png", "uploadId": "up-404"},
            {"name": "local", "url": "file:///etc/passwd"},
            {"name": "bad", "content": "not base64!"},
            {"name": "empty"},
        ),
        fetch_upload=fetch,
        log=JsonLogger("bridge", stream=stream),
    )
    png_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert parts == [
        {"type": "file", "mime": "image/png", "url": png_url, "filename": "shot.png"},
        {"type": "file", "mime": "application/pdf", "url": "https://example.com/docs/spec.pdf", "filename": "spec.pdf"},
        {"type": "file", "mime": "text/plain", "url": "data:text/plain;base64,aGk=", "filename": "note.txt"},
        {"type": "file", "mime": "image/png", "url": png_url, "filename": "diagram.png"},
    ]
    skipped = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(s["filename"], s["event"]) for s in skipped] == [
        (name, "prompt.attachment_skipped") for name in ("gone.png", "local", "bad", "empty")
    ]


async def test_uploads_are_fetched_with_the_sandbox_token_and_bounded() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/big"):
            return httpx.Response(200, content=b"x" * (MAX_ATTACHMENT_BYTES + 1))
        if request.url.path.endswith("/missing"):
            return httpx.Response(404)
        return httpx.Response(200, content=PNG)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        fetch = UploadFetcher("https://cp.example.com/", "sess 1", "tok-123", http=http)
        assert await fetch("up-1") == PNG
        assert seen[0].url == "https://cp.example.com/sessions/sess%201/uploads/up-1"
        assert seen[0].headers["Authorization"] == "Bearer tok-123"
        assert await fetch("big") is None and await fetch("missing") is None
        assert await fetch("../etc") is None and len(seen) == 3, "a malformed id is never requested"
