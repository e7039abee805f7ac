"""The env server's password: made inside the sandbox, and never leaving it.

Unless ``OPENCODE_SERVER_PASSWORD`` is set, OpenCode answers anyone who reaches its port,
and with the default host network that is any other sandbox on the machine (another
tenant's agent could drive this one). With it, OpenCode demands HTTP basic auth (user
``OPENCODE_SERVER_USERNAME``, ``opencode`` by default) on its whole API, health included.

The supervisor makes a fresh password at every start and writes it to
``RUNTIME_RUN_DIR/env-server-auth`` (mode 0600; the run dir is in no snapshot path). The
env server gets it in its environment, which is the only way OpenCode takes it; the
bridge and every health probe read the file. It is never in the service's environment,
in an argv, in a log line (the loggers redact it), or in the agent's shells (the session
env file unsets it, see :mod:`sandbox_runtime.sessionenv`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sandbox_runtime import contract as c

PASSWORD_ENV = "OPENCODE_SERVER_PASSWORD"
USERNAME_ENV = "OPENCODE_SERVER_USERNAME"
_PASSWORD_BYTES = 32


@dataclass(frozen=True)
class ServerCredentials:
    """User name and password of the env server's basic auth."""

    username: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"ServerCredentials(username={self.username!r}, password='***')"

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"

    @property
    def headers(self) -> dict[str, str]:
        """Headers of an authenticated request."""
        return {"Authorization": self.authorization}

    def server_env(self) -> dict[str, str]:
        """What the env server's environment needs to demand these credentials."""
        return {USERNAME_ENV: self.username, PASSWORD_ENV: self.password}


def auth_file(run_dir: Path) -> Path:
    """Where the password lives."""
    return run_dir / c.ENV_SERVER_AUTH_FILE


def create(run_dir: Path) -> ServerCredentials:
    """Make a new password and store it (0600 from the first byte, replaced atomically)."""
    credentials = ServerCredentials(c.ENV_SERVER_USERNAME, secrets.token_urlsafe(_PASSWORD_BYTES))
    run_dir.mkdir(parents=True, exist_ok=True)
    target = auth_file(run_dir)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(credentials.password + "\n")
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return credentials


def load(run_dir: Path) -> ServerCredentials | None:
    """The stored credentials; None when there are none (an env server started without a password)."""
    try:
        password = auth_file(run_dir).read_text().strip()
    except OSError:
        return None
    return ServerCredentials(c.ENV_SERVER_USERNAME, password) if password else None
