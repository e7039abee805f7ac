"""The boot sequence before any long-running child starts.

repository (per boot mode) → ``setup.sh`` (fresh and build) → [build: result line, stop]
→ [warm pool: wait for the session claim] → ``start.sh`` (every mode but build).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from sandbox_runtime import contract as c
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.dirwatch import DirectoryWatch
from sandbox_runtime.gitcmd import Git, GitCredentials, GitError
from sandbox_runtime.hooks import HookResult, run_hook
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.repo import Repository

MAX_ERROR_CHARS = 4000
_CLAIM_POLL_INTERVAL = 0.05
_CLAIM_POLL_WATCHED = 2.0


class BootError(RuntimeError):
    """Boot cannot continue; the message is already redacted."""


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment for hooks and the env server: everything but the runtime's secrets.

    The agent runs inside the env server and has no business with the sandbox token or
    the VCS token; pushing goes through the bridge.
    """
    child = {k: v for k, v in env.items() if k not in c.SECRET_ENV_NAMES}
    # The runtime's own import path (set by the provider) is not the agent's business.
    runtime_path = child.pop(c.RUNTIME_PYTHONPATH, None)
    if runtime_path is not None and child.get("PYTHONPATH") == runtime_path:
        del child["PYTHONPATH"]
    return child


def make_git(config: RuntimeConfig, env: Mapping[str, str]) -> Git:
    """A :class:`Git` runner with the config's credentials and the process env (minus secrets)."""
    return Git(
        GitCredentials(config.clone_username, config.clone_token),
        timeout=config.git_timeout,
        base_env=child_env(env),
    )


def make_repository(config: RuntimeConfig, env: Mapping[str, str], log: JsonLogger) -> Repository:
    """The configured checkout."""
    return Repository(config.repo_dir, config.clone_url, git=make_git(config, env), depth=config.clone_depth, log=log)


def _read_if_present(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # absent (the usual case) or unreadable: try again later
        return None


def _tail(text: str) -> str:
    return text[-MAX_ERROR_CHARS:]


class Boot:
    """Runs the boot steps for one :class:`RuntimeConfig`; the supervisor owns the result."""

    def __init__(self, config: RuntimeConfig, env: Mapping[str, str], log: JsonLogger) -> None:
        self.config = config
        self.env = dict(env)
        self._log = log

    async def _hook(self, name: str, timeout: float) -> HookResult:
        result = await run_hook(
            self.config.repo_dir,
            name,
            timeout=timeout,
            env=child_env(self.env),
            log_dir=self.config.run_dir / "hooks",
        )
        if not result.ran:
            self._log.info("hook.absent", hook=name)
        elif result.ok:
            self._log.info("hook.ok", hook=name, duration=result.duration)
        else:
            self._log.warning(
                "hook.failed", hook=name, returncode=result.returncode, timed_out=result.timed_out, tail=result.tail
            )
        return result

    async def prepare_repository(self) -> str | None:
        """Clone or sync per boot mode, then run setup.sh where it applies; returns the head sha.

        Raises:
            BootError: the repository cannot be prepared, or setup.sh failed in build mode.
        """
        mode = self.config.boot_mode
        if not self.config.repo_name:
            self._log.info("repo.none")
            self.config.workspace_dir.mkdir(parents=True, exist_ok=True)
            return None
        repo = make_repository(self.config, self.env, self._log)
        started = time.monotonic()
        try:
            state = await repo.prepare(mode, self.config.effective_branch)
        except GitError as exc:
            raise BootError(_tail(str(exc))) from None
        self._log.info(
            "repo.ready",
            mode=mode.value,
            head_sha=state.head_sha,
            branch=state.branch,
            image_sha=self.config.repo_image_sha,
            seconds=round(time.monotonic() - started, 3),
        )
        base_sha = self.config.session.base_sha if self.config.session else None
        if base_sha and mode in (c.BootMode.FRESH, c.BootMode.REPO_IMAGE):  # a restore keeps the agent's work
            try:
                await repo.check_out_commit(base_sha, self.config.effective_branch)
                state = await repo.state()
            except GitError as exc:
                raise BootError(_tail(str(exc))) from None
        if mode is not c.BootMode.BUILD:
            await self._ensure_identity(repo)
        if mode in (c.BootMode.FRESH, c.BootMode.BUILD):
            setup = await self._hook("setup", self.config.setup_timeout)
            if not setup.ok and mode is c.BootMode.BUILD:
                raise BootError(_tail(self._log.scrub(setup.describe())))
        return state.head_sha

    async def _ensure_identity(self, repo: Repository) -> None:
        """A repository without a commit identity gets the fallback one, so ``git commit`` works at once."""
        try:
            if await repo.identity() is None:
                await repo.set_identity(self.config.git_fallback_identity)
                self._log.info("git.identity", identity=str(self.config.git_fallback_identity))
        except GitError as exc:  # commits would fail, the session can still be useful
            self._log.warning("git.identity_failed", error=str(exc))

    async def run_start_hook(self) -> bool:
        """Run start.sh (failure is logged, not fatal: the session can still be useful); True if it ran."""
        if not self.config.repo_name:
            return False
        return (await self._hook("start", self.config.start_timeout)).ran

    async def build(self, stdout: TextIO) -> int:
        """Build mode: prepare, run setup.sh, print the result line; returns the exit code."""
        started = time.monotonic()
        try:
            head_sha = await self.prepare_repository()
        except BootError as exc:
            stdout.write(c.format_build_line(c.BUILD_FAILED_MARKER, {"error": self._log.scrub(str(exc))}))
            stdout.flush()
            self._log.error("build.failed", error=str(exc))
            return c.EXIT_FATAL
        payload = {
            "head_sha": head_sha,
            "branch": self.config.effective_branch,
            "duration_seconds": round(time.monotonic() - started, 3),
        }
        stdout.write(c.format_build_line(c.BUILD_COMPLETE_MARKER, payload))
        stdout.flush()
        self._log.info("build.complete", **payload)
        return c.EXIT_OK

    async def wait_for_claim(self, path: Path, timeout: float) -> c.SessionClaim:
        """Warm-pool mode: wait for the claim file, read it, delete it (it holds secrets).

        Raises:
            BootError: no valid claim arrived within ``timeout``.
        """
        self._log.info("session.waiting", path=str(path), timeout=timeout)
        # Tells the service (which polls for it) that boot is done and a claim is awaited.
        marker = self.config.run_dir / c.CLAIM_WAITING_FILE
        with contextlib.suppress(OSError):
            self.config.run_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{os.getpid()}\n")
        try:
            return await self._poll_claim(path, timeout)
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()

    async def _poll_claim(self, path: Path, timeout: float) -> c.SessionClaim:
        deadline = time.monotonic() + timeout
        with DirectoryWatch(path.parent) as watch:
            # Woken by inotify when the claim lands; polling is the safety net, and the way
            # when inotify is unavailable or the directory does not exist yet.
            interval = _CLAIM_POLL_WATCHED if watch.active else _CLAIM_POLL_INTERVAL
            while time.monotonic() < deadline:
                raw = await asyncio.to_thread(_read_if_present, path)
                if raw is not None:
                    try:
                        claim = c.SessionClaim.model_validate_json(raw)
                    except (ValidationError, ValueError) as exc:
                        # A half-written file (writer ignored the rename advice): give it a moment.
                        self._log.warning("session.claim_unreadable", error=str(exc)[:500])
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                        self._log.info("session.claimed", session_id=claim.session_config.session_id)
                        return claim
                await watch.changed(min(interval, max(0.0, deadline - time.monotonic())))
        raise BootError(f"no session claim at {path} within {timeout:.0f}s")
