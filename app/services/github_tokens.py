"""GitHub App installation tokens for cloning and pushing inside sandboxes.

Flow: sign an RS256 app JWT (``iss`` = app id, ``iat`` = now - 60 s to absorb clock
skew, ``exp`` = now + 9 min, under GitHub's 10-minute cap), then
``POST {api_base}/app/installations/{id}/access_tokens``. The installation token
(valid one hour) is cached until 5 minutes before it expires; an ``asyncio.Lock``
makes concurrent callers share one mint.

A failure raises :class:`GitHubTokenError` (or :class:`~app.errors.ProviderUnavailable`
when GitHub cannot be reached): a sandbox must never fall back to an anonymous clone
that would fail later, or worse, succeed against the wrong visibility.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import jwt

from app.errors import BadRequest, ProviderError, ProviderUnavailable

DEFAULT_API_BASE = "https://api.github.com"
JWT_BACKDATE_SECONDS = 60
JWT_LIFETIME_SECONDS = 540
REFRESH_MARGIN_SECONDS = 300


class GitHubTokenError(ProviderError):
    """GitHub refused to mint an installation token, or answered something unusable."""

    code = "github_token_error"


def api_base_for(hostname: str | None) -> str:
    """``https://api.github.com``, or ``https://{hostname}/api/v3`` for GitHub Enterprise Server."""
    if not hostname or hostname in ("github.com", "api.github.com"):
        return DEFAULT_API_BASE
    return f"https://{hostname}/api/v3"


def load_private_key(pem: str | None = None, path: str | Path | None = None) -> str:
    """The app's private key from PEM text (``\\n`` escapes allowed) or a file.

    Raises:
        BadRequest: neither is given, the file is unreadable or the text is not a PEM key.
    """
    if pem:
        text = pem.replace("\\n", "\n").strip()
    elif path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise BadRequest(f"cannot read the GitHub App private key file: {exc.strerror}") from exc
    else:
        raise BadRequest("a GitHub App private key (PEM text or file) is required")
    if "PRIVATE KEY-----" not in text:
        raise BadRequest("the GitHub App private key is not a PEM private key")
    return text + "\n"


@dataclass(frozen=True)
class InstallationToken:
    """A minted token and its expiry (Unix seconds)."""

    token: str
    expires_at: float

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"InstallationToken(token='***', expires_at={self.expires_at})"


class GitHubAppTokenProvider:
    """Mints and caches installation tokens for one GitHub App installation."""

    def __init__(
        self,
        *,
        app_id: str | int,
        private_key: str,
        installation_id: str | int,
        api_base: str = DEFAULT_API_BASE,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app_id = str(app_id)
        self._private_key = private_key
        self._installation_id = str(installation_id)
        self._api_base = api_base.rstrip("/")
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(15.0))
        self._clock = clock
        self._cached: InstallationToken | None = None
        self._lock = asyncio.Lock()
        self.mint_count = 0

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it."""
        if self._own_http:
            await self._http.aclose()

    def app_jwt(self) -> str:
        """A fresh RS256 app JWT.

        Raises:
            BadRequest: the private key cannot sign (malformed or not RSA).
        """
        now = int(self._clock())
        claims = {"iat": now - JWT_BACKDATE_SECONDS, "exp": now + JWT_LIFETIME_SECONDS, "iss": self._app_id}
        try:
            return jwt.encode(claims, self._private_key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise BadRequest(f"the GitHub App private key cannot sign a JWT: {type(exc).__name__}") from exc

    async def get_token(self) -> InstallationToken:
        """A token valid for at least 5 more minutes, minted when needed.

        Raises:
            GitHubTokenError: GitHub refused (bad app id, key, installation) or answered garbage.
            ProviderUnavailable: GitHub could not be reached or answered 5xx.
        """
        async with self._lock:
            cached = self._cached
            if cached is not None and cached.expires_at - REFRESH_MARGIN_SECONDS > self._clock():
                return cached
            self._cached = await self._mint()
            return self._cached

    async def _mint(self) -> InstallationToken:
        url = f"{self._api_base}/app/installations/{self._installation_id}/access_tokens"
        headers = {
            "Authorization": f"Bearer {self.app_jwt()}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        try:
            response = await self._http.post(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"GitHub is unreachable: {type(exc).__name__}") from exc
        self.mint_count += 1
        if response.status_code >= 500:
            raise ProviderUnavailable(f"GitHub answered {response.status_code} minting an installation token")
        if response.status_code != 201:
            raise GitHubTokenError(
                f"GitHub refused an installation token ({response.status_code}): {_message(response)}",
                status=response.status_code,
                installation_id=self._installation_id,
            )
        try:
            body = response.json()
            token = body["token"]
            expires_at = datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError) as exc:
            raise GitHubTokenError("GitHub answered an unusable installation token response") from exc
        if not isinstance(token, str) or not token:
            raise GitHubTokenError("GitHub answered an empty installation token")
        return InstallationToken(token=token, expires_at=expires_at)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""
