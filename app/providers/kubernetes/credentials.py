"""How requests to the API server authenticate: a bearer token from one of several sources.

Client certificates live in the TLS context (``config``); everything else is
an ``Authorization`` header from a ``Credentials`` source:

* ``StaticToken``: a kubeconfig ``token`` (or basic auth, for old clusters).
* ``TokenFile``: a kubeconfig ``tokenFile`` or the in-cluster service account
  token, re-read every minute (bound service account tokens rotate hourly).
* ``ExecPlugin``: a kubeconfig ``exec`` credential plugin (``aws eks get-token``,
  ``gke-gcloud-auth-plugin``, ``kubelogin``...), run as an async subprocess
  and cached until shortly before the expiry it states.

On a 401 the client calls ``invalidate`` and retries once, so a rotated or
expired token is fetched again instead of failing the call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from app.errors import ProviderAuthError

#: Seconds a token read from a file is reused before the file is read again.
TOKEN_FILE_REFRESH_SECONDS = 60.0
#: Seconds before a plugin token's stated expiry at which it is fetched anew.
EXPIRY_MARGIN_SECONDS = 30.0
#: Seconds a credential plugin may run.
PLUGIN_TIMEOUT_SECONDS = 60.0


class Credentials(Protocol):
    """A source of request headers that authenticate us."""

    async def headers(self) -> dict[str, str]:
        """The headers to send (empty for none)."""
        ...

    def invalidate(self) -> None:
        """Forget any cached token: the server refused it."""
        ...


class NoCredentials:
    """No header: the TLS client certificate (or nothing) authenticates."""

    async def headers(self) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        """Nothing cached."""


class StaticToken:
    """A fixed ``Authorization`` value (a kubeconfig token, or basic auth)."""

    def __init__(self, token: str | None = None, *, basic: tuple[str, str] | None = None) -> None:
        if basic is not None:
            encoded = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
            self._value = f"Basic {encoded}"
        else:
            self._value = f"Bearer {token}"

    async def headers(self) -> dict[str, str]:
        return {"Authorization": self._value}

    def invalidate(self) -> None:
        """A fixed token cannot be refreshed."""

    def __repr__(self) -> str:  # never the token itself
        return "StaticToken(<redacted>)"


class TokenFile:
    """A bearer token read from a file, re-read periodically and after a 401."""

    def __init__(self, path: Path, *, refresh_seconds: float = TOKEN_FILE_REFRESH_SECONDS) -> None:
        self.path = path
        self._refresh = refresh_seconds
        self._token: str | None = None
        self._read_at = 0.0

    async def headers(self) -> dict[str, str]:
        if self._token is None or time.monotonic() - self._read_at > self._refresh:
            try:
                text = await asyncio.to_thread(self.path.read_text)
            except OSError as exc:
                raise ProviderAuthError(f"kubernetes token file {self.path} is unreadable: {exc.strerror}") from exc
            self._token, self._read_at = text.strip(), time.monotonic()
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None


class ExecPlugin:
    """A client-go credential plugin: runs a command that prints an ``ExecCredential``."""

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        api_version: str = "client.authentication.k8s.io/v1",
        install_hint: str | None = None,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.env = dict(env or {})
        self.api_version = api_version
        self.install_hint = install_hint
        self._token: str | None = None
        self._expires: float | None = None
        self._lock = asyncio.Lock()

    async def headers(self) -> dict[str, str]:
        async with self._lock:  # one plugin run at a time; the others reuse its token
            if self._token is None or (self._expires is not None and time.time() >= self._expires):
                self._token, self._expires = await self._run()
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None

    async def _run(self) -> tuple[str, float | None]:
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            process = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            hint = f" ({self.install_hint})" if self.install_hint else ""
            raise ProviderAuthError(f"kubernetes credential plugin {self.command!r} cannot run{hint}: {exc}") from exc
        try:
            async with asyncio.timeout(PLUGIN_TIMEOUT_SECONDS):
                out, err = await process.communicate()
        except TimeoutError as exc:
            process.kill()
            await process.wait()
            raise ProviderAuthError(f"kubernetes credential plugin {self.command!r} timed out") from exc
        if process.returncode != 0:
            detail = err.decode(errors="replace").strip()[-300:]
            raise ProviderAuthError(
                f"kubernetes credential plugin {self.command!r} failed (exit {process.returncode}): {detail}"
            )
        return parse_exec_credential(out, self.command)


def parse_exec_credential(output: bytes, command: str) -> tuple[str, float | None]:
    """The token and its expiry (epoch seconds, minus a margin) from a plugin's output."""
    try:
        status = json.loads(output)["status"]
        token = status["token"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderAuthError(
            f"kubernetes credential plugin {command!r} printed no token "
            "(client certificates from plugins are not supported)"
        ) from exc
    expires: float | None = None
    stamp = status.get("expirationTimestamp")
    if isinstance(stamp, str) and stamp:
        try:
            expires = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC).timestamp()
        except ValueError:
            expires = None
    return str(token), (expires - EXPIRY_MARGIN_SECONDS) if expires is not None else None
