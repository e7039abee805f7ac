"""A claim's env vars, handed to an env server that is already running.

A warm sandbox's env server starts before its claim, so it cannot have the session's env
vars in its environment; restarting it for them costs a cold boot of OpenCode (~2.6 s on
the claim's critical path). What the agent needs of them reaches it another way:

* **Its commands.** OpenCode runs every command through a shell it spawns with its own
  environment: the bash tool as ``$SHELL -c <cmd>`` (non-interactive; ``$SHELL`` falls
  back to bash, then sh), the session shell endpoint as ``bash -l -c`` (login), a PTY as
  an interactive shell. The env server's environment points those shells at the session
  env file, which exists from boot (holding no session vars) and is filled at the claim:
  ``BASH_ENV`` (non-interactive bash, login or not), ``ENV`` (interactive sh, bash in POSIX
  mode), and a line in ``~/.bashrc`` and ``~/.profile`` (interactive and login shells).
  The file exports once per process tree: a marker variable lets nested shells keep what
  their parents set (``FOO=1 bash -c 'echo $FOO'`` still prints 1).
* **Provider credentials.** A variable that some provider of OpenCode's catalogue reads as
  its only key (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, ...) is also handed to OpenCode
  through ``PUT /auth/{provider}``, which takes effect at once.
* **The rest** only acts inside OpenCode's own process and needs a restart of the env server
  (:func:`plan` lists them): names that are no shell identifiers, ``OPENCODE_*`` and
  ``XDG_*``, :data:`RESTART_NAMES` (proxies, TLS roots, Node/Bun options, the shell and
  home, the SDKs' base URLs), and the credentials of the session's own provider when that
  provider reads several variables (e.g. ``AWS_*`` for ``amazon-bedrock``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_runtime.serverauth import PASSWORD_ENV, USERNAME_ENV

LOADED_MARKER = "SANDBOX_SESSION_ENV_LOADED"
"""Set (exported) by the env file in the shells that loaded it; nested shells skip the exports."""
RESTART_PREFIXES = ("OPENCODE_", "XDG_")
RESTART_NAMES = frozenset(
    {
        "SHELL", "HOME", "BASH_ENV", "ENV",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
        "NODE_EXTRA_CA_CERTS", "NODE_TLS_REJECT_UNAUTHORIZED", "NODE_OPTIONS", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "BUN_OPTIONS", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL",
    }
)  # fmt: skip
"""Names only OpenCode's own process acts on: a claim bringing one restarts the env server."""
PROFILE_FILES = (".bashrc", ".profile")
_PROFILE_MARK = "# sandbox-runtime: the session's env vars"
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_shell_name(name: str) -> bool:
    """True when a POSIX shell can export ``name``."""
    return _SHELL_NAME.match(name) is not None


def quote(value: str) -> str:
    """``value`` as one single-quoted POSIX shell word."""
    return "'" + value.replace("'", "'\\''") + "'"


def render(env: Mapping[str, str]) -> str:
    """The env file for ``env`` (names that are no shell identifiers are left out)."""
    lines = [
        "# The session's env vars, for the agent's shells (written by sandbox_runtime; holds secrets).",
        # The env server's password is OpenCode's business only; a shell has no use for it.
        f"unset {PASSWORD_ENV} {USERNAME_ENV}",
        f'if [ -z "${{{LOADED_MARKER}-}}" ]; then',
        f"  export {LOADED_MARKER}=1",
    ]
    lines += [f"  export {name}={quote(value)}" for name, value in sorted(env.items()) if is_shell_name(name)]
    lines.append("fi")
    return "\n".join(lines) + "\n"


def write(path: Path, env: Mapping[str, str]) -> None:
    """Write the env file for ``env``: mode 0600 from the first byte, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(render(env))
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def shell_hooks(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``BASH_ENV`` and ``ENV`` for the env server, unless its environment already sets them."""
    return {name: str(path) for name in ("BASH_ENV", "ENV") if name not in env}


def install_profile_hooks(home: Path, path: Path) -> list[Path]:
    """Have interactive and login shells load the env file too; returns the files changed.

    Best effort: a home that does not exist or cannot be written is left alone.
    """
    line = f"[ -r {quote(str(path))} ] && . {quote(str(path))}"
    changed: list[Path] = []
    if not home.is_dir():
        return changed
    for name in PROFILE_FILES:
        profile = home / name
        try:
            text = profile.read_text() if profile.exists() else ""
            if _PROFILE_MARK in text:
                continue
            with profile.open("a") as fh:
                fh.write(("" if not text or text.endswith("\n") else "\n") + f"{_PROFILE_MARK}\n{line}\n")
        except OSError:
            continue
        changed.append(profile)
    return changed


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str]:
    """The names whose value ``after`` adds or changes."""
    return {name: value for name, value in after.items() if before.get(name) != value}


@dataclass(frozen=True)
class ProviderCatalogue:
    """Which env vars each of the env server's providers reads (OpenCode: ``GET /api/integration``)."""

    env_names: Mapping[str, tuple[str, ...]]
    """Provider id -> the env var names it reads its credentials from."""

    @classmethod
    def from_integrations(cls, payload: Any) -> ProviderCatalogue | None:
        """Parse ``{"data": [{"id", "methods": [{"type": "env", "names": [...]}, ...]}]}``; None if malformed."""
        entries = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            return None
        found: dict[str, tuple[str, ...]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            for method in entry.get("methods") or []:
                names = method.get("names") if isinstance(method, dict) and method.get("type") == "env" else None
                if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                    found[entry["id"]] = tuple(names)
        return cls(found)

    def readers_of(self, name: str) -> list[tuple[str, tuple[str, ...]]]:
        """(provider id, its env names) of every provider that reads ``name``."""
        return [(provider, names) for provider, names in self.env_names.items() if name in names]


@dataclass(frozen=True)
class ClaimEnvPlan:
    """How a claim's env vars reach a running env server."""

    shell: dict[str, str] = field(default_factory=dict)
    """Everything the session brings, for the env file (the agent's commands see all of it)."""
    provider_keys: dict[str, str] = field(default_factory=dict)
    """Provider id -> API key, for ``PUT /auth/{provider}``."""
    restart: tuple[str, ...] = ()
    """Names only a restarted env server honours (sorted); empty when none."""


def plan(env: Mapping[str, str], catalogue: ProviderCatalogue | None, session_provider: str) -> ClaimEnvPlan:
    """Sort a claim's new env vars (see the module docstring).

    Without a ``catalogue`` (an env server that is not OpenCode, or one that did not answer)
    nothing can be handed over through its API, so any env var means a restart.
    """
    if catalogue is None:
        return ClaimEnvPlan(shell=dict(env), restart=tuple(sorted(env)))
    keys: dict[str, str] = {}
    restart: set[str] = set()
    for name, value in env.items():
        if not is_shell_name(name) or name in RESTART_NAMES or name.startswith(RESTART_PREFIXES):
            restart.add(name)
        for provider, names in catalogue.readers_of(name):
            if len(names) == 1:
                keys[provider] = value
            elif provider == session_provider:  # read by the provider's SDK from OpenCode's environment
                restart.add(name)
    return ClaimEnvPlan(shell=dict(env), provider_keys=keys, restart=tuple(sorted(restart)))
