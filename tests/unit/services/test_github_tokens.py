"""GitHub App installation tokens against a local HTTP server that verifies the app JWT."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.errors import BadRequest, ProviderUnavailable
from app.services.github_tokens import (
    GitHubAppTokenProvider,
    GitHubTokenError,
    api_base_for,
    load_private_key,
)

APP_ID = "12345"
INSTALLATION = "678"


@pytest.fixture(scope="module")
def key_pair() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


class FakeGitHub:
    """``POST /app/installations/{id}/access_tokens`` that verifies the JWT like GitHub does."""

    def __init__(self, public_key: Any) -> None:
        self.public_key = public_key
        self.claims: list[dict[str, Any]] = []
        self.status = 201
        self.check_times = True  # off when the client runs on a fake clock
        self.expires_at = datetime(2099, 1, 1, tzinfo=UTC)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, body = fake.answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v3"

    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        if path != f"/api/v3/app/installations/{INSTALLATION}/access_tokens":
            return 404, {"message": "Not Found"}
        try:
            claims = jwt.decode(
                authorization.removeprefix("Bearer "),
                self.public_key,
                algorithms=["RS256"],
                options={
                    "require": ["iat", "exp", "iss"],
                    "verify_iat": self.check_times,
                    "verify_exp": self.check_times,
                },
            )
        except jwt.PyJWTError as exc:
            return 401, {"message": f"bad JWT: {exc}"}
        self.claims.append(claims)
        if claims["exp"] - claims["iat"] > 600 or claims["iss"] != APP_ID:
            return 401, {"message": "JWT rejected"}
        if self.status != 201:
            return self.status, {"message": "Bad credentials"}
        return 201, {"token": f"ghs_minted_{len(self.claims)}", "expires_at": self.expires_at.isoformat()}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def github(key_pair: tuple[str, Any]) -> Iterator[FakeGitHub]:
    server = FakeGitHub(key_pair[1])
    try:
        yield server
    finally:
        server.stop()


def _provider(pem: str, github: FakeGitHub, **kwargs: Any) -> GitHubAppTokenProvider:
    return GitHubAppTokenProvider(
        app_id=APP_ID, private_key=pem, installation_id=INSTALLATION, api_base=github.api_base, **kwargs
    )


async def test_mints_a_token_with_a_valid_app_jwt_and_caches_it(key_pair: tuple[str, Any], github: FakeGitHub) -> None:
    provider = _provider(key_pair[0], github)
    try:
        tokens = await asyncio.gather(*(provider.get_token() for _ in range(5)))
    finally:
        await provider.aclose()
    assert {t.token for t in tokens} == {"ghs_minted_1"}, "concurrent callers share one mint"
    assert provider.mint_count == 1
    claims = github.claims[0]
    assert claims["iss"] == APP_ID and claims["exp"] - claims["iat"] <= 600
    assert "ghs_minted_1" not in repr(tokens[0])


async def test_refreshes_five_minutes_before_expiry(key_pair: tuple[str, Any], github: FakeGitHub) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC).timestamp()]
    github.expires_at = datetime(2030, 1, 1, 1, tzinfo=UTC)
    github.check_times = False
    provider = _provider(key_pair[0], github, clock=lambda: now[0])
    try:
        first = await provider.get_token()
        now[0] += 54 * 60  # 6 minutes left: still served from the cache
        assert (await provider.get_token()) is first
        now[0] += 2 * 60  # 4 minutes left: minted again
        second = await provider.get_token()
    finally:
        await provider.aclose()
    assert second.token != first.token and provider.mint_count == 2


async def test_refusal_is_a_clear_error_not_an_anonymous_fallback(
    key_pair: tuple[str, Any], github: FakeGitHub
) -> None:
    github.status = 404
    provider = _provider(key_pair[0], github)
    try:
        with pytest.raises(GitHubTokenError, match="404"):
            await provider.get_token()
    finally:
        await provider.aclose()


async def test_a_wrong_key_is_rejected_by_the_server(github: FakeGitHub) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    provider = _provider(pem, github)
    try:
        with pytest.raises(GitHubTokenError, match="401"):
            await provider.get_token()
    finally:
        await provider.aclose()


async def test_unreachable_github_is_transient(key_pair: tuple[str, Any]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        provider = GitHubAppTokenProvider(
            app_id=APP_ID, private_key=key_pair[0], installation_id=INSTALLATION, http=http
        )
        with pytest.raises(ProviderUnavailable):
            await provider.get_token()


def test_api_base_and_key_loading(tmp_path: Path, key_pair: tuple[str, Any]) -> None:
    assert api_base_for(None) == "https://api.github.com"
    assert api_base_for("github.com") == "https://api.github.com"
    assert api_base_for("ghe.example.com") == "https://ghe.example.com/api/v3"
    escaped = key_pair[0].replace("\n", "\\n")
    assert load_private_key(pem=escaped) == key_pair[0].strip() + "\n"
    (tmp_path / "key.pem").write_text(key_pair[0])
    assert load_private_key(path=tmp_path / "key.pem") == key_pair[0].strip() + "\n"
    with pytest.raises(BadRequest):
        load_private_key()
    with pytest.raises(BadRequest):
        load_private_key(pem="not a key")
    with pytest.raises(BadRequest):
        GitHubAppTokenProvider(app_id=1, private_key="-----BEGIN PRIVATE KEY-----\nxx", installation_id=2).app_jwt()
