"""Async Python client for the native API, with signed requests.

Every request carries both a bearer token and an ``X-Sandbox-Signature`` over
method, path, query and body hash, so it works against a service in either
auth mode and cannot be replayed or redirected.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from app.auth import CONTENT_SHA256_HEADER, EMPTY_BODY_SHA256, make_token, now_ms, sign_request

_CHUNK = 1 << 16


class ApiError(Exception):
    """The service answered with an error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class SandboxClient:
    """``async with SandboxClient(url, secret) as client: await client.create()``."""

    def __init__(self, base_url: str, secret: bytes, *, timeout: float = 600.0, transport: Any = None) -> None:
        self._secret = secret
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def auth_headers(self, method: str, url: httpx.URL, body_sha256: str) -> dict[str, str]:
        """The headers that authenticate one request."""
        stamp = now_ms()
        path_query = url.raw_path.decode("ascii")
        return {
            "Authorization": f"Bearer {make_token(self._secret, stamp)}",
            "X-Sandbox-Signature": sign_request(
                self._secret, method, path_query, body_sha256, stamp, nonce=secrets.token_hex(8)
            ),
        }

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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        if isinstance(body, dict):
            raise ApiError(response.status_code, str(body.get("code", "error")), str(body.get("error", "")))
        raise ApiError(response.status_code, "http_error", response.text[:200])
    return body
