"""Running git with credentials that never touch disk or argv.

Every invocation gets ``-c credential.helper=`` (dropping helpers configured in
the image) followed by an inline shell helper that echoes the user name and
token *from its own environment*. The token therefore travels only in the git
process's environment: it is absent from argv (``/proc/*/cmdline``), from
``.git/config`` (the remote URL carries no userinfo, and ``-c`` values are not
persisted) and from any file a snapshot could pick up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox_runtime.jsonlog import scrub
from sandbox_runtime.procs import CommandResult, run_bounded

# Single quotes keep the variables unexpanded until the helper runs; `get` is the only
# operation we answer (store/erase are ignored so nothing is ever written anywhere).
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; echo "username=${VCS_CLONE_USERNAME}"; echo "password=${VCS_CLONE_TOKEN}"; }; f'
)

_STRIPPED_ENV = ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_CONFIG_PARAMETERS", "GIT_DIR", "GIT_WORK_TREE")


class GitError(RuntimeError):
    """A git command failed or timed out; the message holds a redacted output tail."""

    def __init__(self, command: str, result: CommandResult, secrets: Sequence[str]) -> None:
        reason = "timed out" if result.timed_out else f"exited {result.returncode}"
        self.tail = scrub(result.tail.strip(), secrets)
        super().__init__(f"git {command} {reason}: {self.tail}" if self.tail else f"git {command} {reason}")
        self.result = result


@dataclass(frozen=True)
class GitCredentials:
    """User name and token answered by the credential helper; token empty = no helper."""

    username: str
    token: str

    def __repr__(self) -> str:  # never show the token, even in a traceback
        return f"GitCredentials(username={self.username!r}, token={'***' if self.token else ''!r})"


class Git:
    """Runs git commands with the credential helper, a timeout and redacted errors."""

    def __init__(self, credentials: GitCredentials, *, timeout: float, base_env: Mapping[str, str] | None = None):
        self._credentials = credentials
        self._timeout = timeout
        self._base_env = dict(os.environ if base_env is None else base_env)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to scrub from any text derived from git output."""
        return (self._credentials.token,) if self._credentials.token else ()

    def env(self) -> dict[str, str]:
        """The environment of a git child: the helper's inputs, no prompts, no inherited askpass."""
        env = {k: v for k, v in self._base_env.items() if k not in _STRIPPED_ENV}
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["VCS_CLONE_USERNAME"] = self._credentials.username
        env["VCS_CLONE_TOKEN"] = self._credentials.token
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        """Full argv for ``git <args>`` (contains the helper text, never the token)."""
        # safe.directory: a restored workspace may be owned by another uid than the runtime's;
        # a sandbox has a single tenant, so git's multi-user ownership check only gets in the way.
        argv = ["git", "-c", "safe.directory=*", "-c", "credential.helper="]
        if self._credentials.token:
            argv += ["-c", f"credential.helper={CREDENTIAL_HELPER}"]
        return [*argv, *args]

    async def run(
        self, *args: str, cwd: Path | None = None, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        """Run ``git <args>``; returns the result, stdout captured.

        Raises:
            GitError: the command failed or timed out and ``check`` is true.
        """
        result = await run_bounded(
            self.argv(args),
            cwd=cwd,
            env=self.env(),
            timeout=timeout or self._timeout,
            capture_stdout=True,
        )
        if check and not result.ok:
            raise GitError(args[0] if args else "", result, self.secrets)
        return result

    async def output(self, *args: str, cwd: Path | None = None) -> str:
        """Run ``git <args>`` and return stripped stdout.

        Raises:
            GitError: the command failed or timed out.
        """
        result = await self.run(*args, cwd=cwd)
        return result.stdout.decode("utf-8", errors="replace").strip()
