"""Async Python client for the native API, with signed requests.

Every request carries both a bearer token and an ``X-Sandbox-Signature`` over
method, path, query and body hash, so it works against a service in either
auth mode and cannot be replayed or redirected.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from app.auth import CONTENT_SHA256_HEADER, EMPTY_BODY_SHA256, request_headers
from app.client_events import (
    ESCAPED,
    ApiError,
    ExecStreamEvent,
    Exit,
    Output,
    RawSseEvent,
    SseDecoder,
    SseEvent,
    api_error,
    exec_frame_event,
    exec_stream_event,
)
from app.frames import FRAMES_MEDIA_TYPE, FrameDecoder, FrameError

__all__ = ["ApiError", "ExecStreamEvent", "Exit", "Output", "SandboxClient", "sse_events"]

_CHUNK = 1 << 16
SSE = "text/event-stream"


class SandboxClient:
    """``async with SandboxClient(url, secret) as client: await client.create()``."""

    def __init__(self, base_url: str, secret: bytes, *, timeout: float = 600.0, transport: Any = None) -> None:
        self._secret = secret
        # Redirects are never followed, so a plain-http service never negotiates
        # TLS: loading the certificate store for it would cost 0.1 s per command.
        tls = base_url.lower().startswith("https://")
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport, verify=tls)

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def auth_headers(self, method: str, url: httpx.URL, body_sha256: str) -> dict[str, str]:
        """The headers that authenticate one request."""
        return request_headers(self._secret, method, url.raw_path.decode("ascii"), body_sha256)

    async def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
        request = self._http.build_request(method, path, json=json, params=params)
        body = request.content
        request.headers.update(self.auth_headers(method, request.url, hashlib.sha256(body).hexdigest()))
        response = await self._http.send(request)
        return _decode(response)

    # -- sandboxes ---------------------------------------------------------

    async def create(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/v1/sandboxes", json=fields)
        return result

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        result = await self.request("GET", "/v1/sandboxes", params=params)
        return list(result["sandboxes"])

    async def get(self, sandbox_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/sandboxes/{sandbox_id}")
        return result

    async def delete(self, sandbox_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("DELETE", f"/v1/sandboxes/{sandbox_id}")
        return result

    async def stop(self, sandbox_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v1/sandboxes/{sandbox_id}/stop")
        return result

    async def start(self, sandbox_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v1/sandboxes/{sandbox_id}/start")
        return result

    async def exec(self, sandbox_id: str, command: list[str] | str, **options: Any) -> dict[str, Any]:
        body = {"command": command, **options}
        result: dict[str, Any] = await self.request("POST", f"/v1/sandboxes/{sandbox_id}/exec", json=body)
        return result

    async def exec_stream(
        self, sandbox_id: str, command: list[str] | str, *, framed: bool = True, **options: Any
    ) -> AsyncGenerator[ExecStreamEvent, None]:
        """Run a command, yielding ``Output`` chunks as they are produced, then one ``Exit``.

        Leaving the loop early (or cancelling) disconnects, which kills the command.
        ``framed=False`` reads server-sent events instead of length-prefixed frames.
        """
        body = {"command": command, **options, "stream": True}
        path = f"/v1/sandboxes/{sandbox_id}/exec"
        # Length-prefixed frames: the bytes as produced, nothing to decode. A service that
        # predates them answers SSE with chunks as escaped bytes (one C pass to decode).
        accept = f"{FRAMES_MEDIA_TYPE}, {SSE};q=0.5" if framed else SSE
        async with self._stream("POST", path, json=body, params={"encoding": ESCAPED}, accept=accept) as response:
            if response.headers.get("content-type", "").startswith(FRAMES_MEDIA_TYPE):
                events = _framed_events(response)
            else:
                events = (exec_stream_event(e, data, ESCAPED) async for e, data, _ in _raw_sse_events(response))
            async for item in events:
                if item is not None:
                    yield item

    # -- background processes ------------------------------------------------

    async def start_process(self, sandbox_id: str, command: list[str] | str, **options: Any) -> dict[str, Any]:
        """Start a background process; its view (``pid``, ``status``, ...)."""
        body = {"command": command, **options}
        result: dict[str, Any] = await self.request("POST", f"/v1/sandboxes/{sandbox_id}/processes", json=body)
        return result

    async def list_processes(self, sandbox_id: str) -> list[dict[str, Any]]:
        result = await self.request("GET", f"/v1/sandboxes/{sandbox_id}/processes")
        return list(result["processes"])

    async def get_process(self, sandbox_id: str, pid: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/sandboxes/{sandbox_id}/processes/{pid}")
        return result

    async def write_stdin(self, sandbox_id: str, pid: str, data: bytes = b"", *, close: bool = False) -> dict[str, Any]:
        """Append ``data`` to a process's stdin; ``close`` then ends it."""
        request = self._http.build_request(
            "POST",
            f"/v1/sandboxes/{sandbox_id}/processes/{pid}/stdin",
            params={"close": "true"} if close else None,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        request.headers.update(self.auth_headers("POST", request.url, hashlib.sha256(data).hexdigest()))
        result: dict[str, Any] = _decode(await self._http.send(request))
        return result

    async def signal_process(self, sandbox_id: str, pid: str, signal: str = "TERM") -> dict[str, Any]:
        path = f"/v1/sandboxes/{sandbox_id}/processes/{pid}/signal"
        result: dict[str, Any] = await self.request("POST", path, json={"signal": signal})
        return result

    async def delete_process(self, sandbox_id: str, pid: str) -> None:
        await self.request("DELETE", f"/v1/sandboxes/{sandbox_id}/processes/{pid}")

    # -- previews --------------------------------------------------------------

    async def create_preview(self, sandbox_id: str, port: int, **fields: Any) -> dict[str, Any]:
        """A preview URL of ``port`` (fields: ``expires_in_seconds``, ``public``)."""
        path = f"/v1/sandboxes/{sandbox_id}/previews"
        result: dict[str, Any] = await self.request("POST", path, json={"port": port, **fields})
        return result

    async def list_previews(self, sandbox_id: str) -> list[dict[str, Any]]:
        result = await self.request("GET", f"/v1/sandboxes/{sandbox_id}/previews")
        return list(result["previews"])

    async def revoke_preview(self, sandbox_id: str, preview_id: str) -> None:
        await self.request("DELETE", f"/v1/sandboxes/{sandbox_id}/previews/{preview_id}")

    async def process_log(self, sandbox_id: str, pid: str, stream: str = "stdout", offset: int = 0) -> bytes:
        """One stream's log so far, from ``offset``."""
        params = {"stream": stream, "offset": str(offset)}
        request = self._http.build_request("GET", f"/v1/sandboxes/{sandbox_id}/processes/{pid}/logs", params=params)
        request.headers.update(self.auth_headers("GET", request.url, EMPTY_BODY_SHA256))
        response = await self._http.send(request)
        if response.status_code >= 400:
            _decode(response)
        return response.content

    async def follow_process(
        self, sandbox_id: str, pid: str, *, offset: int = 0, stderr_offset: int = 0
    ) -> AsyncGenerator[Output | dict[str, Any], None]:
        """Both streams as ``Output`` chunks while the process runs, then its final view (a dict)."""
        params = {"follow": "true", "offset": str(offset), "stderr_offset": str(stderr_offset)}
        async with self._stream("GET", f"/v1/sandboxes/{sandbox_id}/processes/{pid}/logs", params=params) as answer:
            async for event, data, _ in sse_events(answer):
                if event == "exit":
                    yield dict(json.loads(data))
                    return
                item = exec_stream_event(event, data)
                if isinstance(item, Output):
                    yield item

    def pty_handshake(self, sandbox_id: str, cols: int, rows: int) -> tuple[str, dict[str, str]]:
        """The WebSocket URL and signed headers of a terminal in the sandbox (``GET …/pty``)."""
        url = self._http.base_url.join(f"/v1/sandboxes/{sandbox_id}/pty").copy_merge_params(
            {"cols": str(cols), "rows": str(rows)}
        )
        headers = self.auth_headers("GET", url, EMPTY_BODY_SHA256)
        return str(url.copy_with(scheme="wss" if url.scheme == "https" else "ws")), headers

    @asynccontextmanager
    async def _stream(
        self, method: str, path: str, *, json: Any = None, params: Any = None, accept: str = SSE
    ) -> AsyncIterator[httpx.Response]:
        """A signed request whose answer is read as it arrives (an error envelope raises)."""
        request = self._http.build_request(method, path, json=json, params=params, headers={"Accept": accept})
        request.headers.update(self.auth_headers(method, request.url, hashlib.sha256(request.content).hexdigest()))
        response = await self._http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                _decode(response)
            yield response
        finally:
            await response.aclose()

    # -- files -------------------------------------------------------------

    async def upload(self, sandbox_id: str, path: str, source: Path) -> None:
        """Stream a local file into the sandbox (hashed first, so the upload is signed)."""
        digest = await asyncio.to_thread(_sha256_file, source)

        async def chunks() -> AsyncIterator[bytes]:
            with source.open("rb") as fh:
                while block := await asyncio.to_thread(fh.read, _CHUNK):
                    yield block

        await self.upload_stream(sandbox_id, path, chunks(), digest)

    async def upload_stream(
        self, sandbox_id: str, path: str, chunks: AsyncIterator[bytes] | bytes, sha256_hex: str | None = None
    ) -> None:
        if isinstance(chunks, bytes):
            sha256_hex = hashlib.sha256(chunks).hexdigest()
        assert sha256_hex is not None, "a streamed upload needs its sha256 to be signed"
        request = self._http.build_request(
            "PUT", f"/v1/sandboxes/{sandbox_id}/files", params={"path": path}, content=chunks
        )
        request.headers.update(self.auth_headers("PUT", request.url, sha256_hex))
        request.headers[CONTENT_SHA256_HEADER] = sha256_hex
        _decode(await self._http.send(request))

    async def download(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        """Stream a file out of the sandbox."""
        request = self._http.build_request("GET", f"/v1/sandboxes/{sandbox_id}/files", params={"path": path})
        request.headers.update(self.auth_headers("GET", request.url, EMPTY_BODY_SHA256))
        response = await self._http.send(request, stream=True)
        if response.status_code >= 400:
            await response.aread()
            _decode(response)
        try:
            async for chunk in response.aiter_bytes(_CHUNK):
                yield chunk
        finally:
            await response.aclose()


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """(event, data, id) of each server-sent event; comments (keepalives) are skipped."""
    async for event, data, event_id in _raw_sse_events(response):
        yield event, data.decode(), event_id


async def _framed_events(response: httpx.Response) -> AsyncIterator[ExecStreamEvent | None]:
    decoder = FrameDecoder()
    async for chunk in response.aiter_bytes():
        for kind, payload in decoder.feed(chunk):
            yield exec_frame_event(kind, payload)
    try:
        decoder.close()
    except FrameError as exc:
        raise ApiError(response.status_code, "stream_incomplete", str(exc)) from None


async def _raw_sse_events(response: httpx.Response) -> AsyncIterator[RawSseEvent]:
    decoder = SseDecoder()
    async for chunk in response.aiter_bytes():
        for event in decoder.feed_raw(chunk):
            yield event


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise api_error(response.status_code, response.content)
    if response.status_code == 204:
        return None
    try:
        return response.json()
    except ValueError:
        return None
