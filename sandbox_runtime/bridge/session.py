"""What the bridge does for a session: the env server session, prompts, stop and push.

Session continuity: the env server session id is persisted in the state dir
(``opencode-session-id``), which a snapshot carries with the env server's own data.
On start the runner reuses, in order, ``SESSION_CONFIG.opencode_session_id`` and the
persisted id if the env server still knows them, and creates a session otherwise.

A prompt that was executing when the previous bridge died (``inflight-prompt.json``)
is aborted and reported as failed: its events cannot be recovered, and a control
plane waiting for its ``execution_complete`` must not wait forever. Unless its
``execution_complete`` is already in the outbox: the bridge died just after reporting it.

Before each prompt the repository's commit identity becomes the prompt's author, or the
fallback identity when the prompt names none (the previous author must not sign for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from sandbox_runtime.boot import child_env, make_git, make_repository
from sandbox_runtime.bridge import protocol as p
from sandbox_runtime.bridge.attachments import FetchUpload, UploadFetcher, file_parts
from sandbox_runtime.bridge.opencode import EnvServerError, ModelRef, OpenCodeClient, PromptTranslator
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.gitcmd import Git, GitCredentials, GitError
from sandbox_runtime.identity import GitIdentity
from sandbox_runtime.jsonlog import JsonLogger, scrub
from sandbox_runtime.repo import Repository, strip_userinfo

INFLIGHT_FILE = "inflight-prompt.json"
_MAX_QUEUED_PROMPTS = 100


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SessionRunner:
    """Executes commands against the env server and the repository, emitting bridge events."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        opencode: OpenCodeClient,
        emit: Callable[[p.OutboundEvent], None],
        log: JsonLogger,
        fetch_upload: FetchUpload | None = None,
        reported: Callable[[str], bool] = lambda message_id: False,
    ) -> None:
        """``reported(message_id)`` says whether that prompt's ``execution_complete`` is pending delivery."""
        assert config.session is not None
        self.config = config
        self.session = config.session
        self._oc = opencode
        self._emit = emit
        self._log = log
        self._fetch_upload = fetch_upload or UploadFetcher(
            config.control_plane_url, config.session.session_id, config.auth_token
        )
        self._identity: GitIdentity | None = None  # the one last written into the repository
        self._reported = reported
        self.opencode_session_id: str | None = None
        self._queue: asyncio.Queue[p.PromptCommand] = asyncio.Queue(maxsize=_MAX_QUEUED_PROMPTS)
        self._current: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._push_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        """True while a prompt executes."""
        return self._current is not None and not self._current.done()

    @property
    def _inflight_path(self) -> Path:
        return self.config.state_dir / INFLIGHT_FILE

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the env server, choose the session, recover an interrupted prompt.

        Raises:
            EnvServerError: the env server stays unreachable.
        """
        await self._oc.wait_healthy(self.config.health_timeout)
        self.opencode_session_id = await self._choose_session()
        await self._recover_inflight()
        self._worker = asyncio.create_task(self._work())

    async def close(self) -> None:
        """Cancel the worker and background tasks; an executing prompt is aborted and reported stopped."""
        tasks = [t for t in (self._worker, self._current, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _choose_session(self) -> str:
        persisted = None
        with contextlib.suppress(OSError):
            persisted = self.config.session_id_file.read_text().strip() or None
        for candidate in (self.session.opencode_session_id, persisted):
            if candidate and await self._oc.session_exists(candidate):
                self._log.info("opencode.session_reused", opencode_session_id=candidate)
                chosen = candidate
                break
        else:
            chosen = await self._oc.create_session(f"session {self.session.session_id}")
            self._log.info("opencode.session_created", opencode_session_id=chosen)
        if chosen != persisted:
            _write_atomic(self.config.session_id_file, chosen + "\n")
        return chosen

    async def _recover_inflight(self) -> None:
        try:
            marker = json.loads(self._inflight_path.read_text())
        except (OSError, ValueError):
            return
        message_id = str(marker.get("messageId", "")) if isinstance(marker, dict) else ""
        if message_id and self.opencode_session_id and not self._reported(message_id):
            await self._oc.abort(self.opencode_session_id)
            error = "interrupted: the bridge restarted while the prompt was executing"
            self._log.warning("prompt.interrupted", message_id=message_id)
            self._emit(p.ErrorEvent(error=error, message_id=message_id))
            self._emit(p.ExecutionCompleteEvent(message_id=message_id, success=False, error=error))
        with contextlib.suppress(OSError):
            self._inflight_path.unlink()

    # --- prompts --------------------------------------------------------------------------

    def submit(self, command: p.PromptCommand) -> None:
        """Queue a prompt; prompts execute one at a time in arrival order."""
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            self._emit(p.ExecutionCompleteEvent(message_id=command.message_id, success=False, error="too many queued"))

    def stop(self) -> None:
        """Abort the executing prompt and drop queued ones (each reported as stopped)."""
        while not self._queue.empty():
            dropped = self._queue.get_nowait()
            self._emit(p.ExecutionCompleteEvent(message_id=dropped.message_id, success=False, error="stopped"))
        if self.busy and self._current is not None:
            self._current.cancel()

    async def _work(self) -> None:
        while True:
            command = await self._queue.get()
            self._current = asyncio.create_task(self._execute(command))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._current)
            self._current = None

    async def _execute(self, command: p.PromptCommand) -> None:
        message_id = command.message_id
        session_id = self.opencode_session_id
        assert session_id is not None
        _write_atomic(self._inflight_path, json.dumps({"messageId": message_id}))
        translator = PromptTranslator(session_id, message_id)
        error: str | None = None
        try:
            await self._set_git_identity(command.author.identity() if command.author else None)
            model = ModelRef.parse(command.model, self.session.provider, self.session.model)
            files = await file_parts(command.attachments, fetch_upload=self._fetch_upload, log=self._log)
            # The env server may be restarting under the supervisor: wait rather than fail.
            await self._oc.wait_healthy(self.config.health_timeout)
            async with self._oc.subscribe() as stream:
                await self._oc.prompt_async(
                    session_id, command.content, model, variant=command.reasoning_effort, files=files
                )
                self._log.info(
                    "prompt.started",
                    message_id=message_id,
                    model=model and model.model_id,
                    variant=command.reasoning_effort,
                    attachments=len(files),
                )
                while not translator.done:
                    event = await stream.next(self.config.bridge.prompt_inactivity_timeout)
                    for produced in translator.feed(event):
                        self._emit(produced)
        except asyncio.CancelledError:
            await asyncio.shield(self._oc.abort(session_id))
            error = "stopped"
        except TimeoutError:
            await self._oc.abort(session_id)
            error = f"no progress from the env server for {self.config.bridge.prompt_inactivity_timeout:.0f}s"
        except EnvServerError as exc:
            error = f"env server failed: {exc}"
        if error is not None and error != "stopped":
            self._emit(p.ErrorEvent(error=error, message_id=message_id))
        success = error is None and translator.success
        first_error = error or (translator.errors[0] if translator.errors else None)
        self._emit(p.ExecutionCompleteEvent(message_id=message_id, success=success, error=first_error))
        self._log.info("prompt.finished", message_id=message_id, success=success)
        with contextlib.suppress(OSError):
            self._inflight_path.unlink()

    async def _set_git_identity(self, author: GitIdentity | None) -> None:
        """The prompt's author (else the fallback) becomes the repository's commit identity."""
        identity = author or self.config.git_fallback_identity
        if identity == self._identity or not (self.config.repo_dir / ".git").exists():
            return
        try:
            await make_repository(self.config, os.environ, self._log).set_identity(identity)
        except GitError as exc:
            self._log.warning("git.identity_failed", error=str(exc))
            return
        self._identity = identity
        self._log.info("git.identity", author=author is not None)

    # --- push -----------------------------------------------------------------------------

    def push(self, command: p.PushCommand) -> None:
        """Start a push in the background (pushes are serialised)."""
        task = asyncio.create_task(self._push(command))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _push(self, command: p.PushCommand) -> None:
        spec = command.push_spec or p.PushSpec()
        branch = command.branch_name or spec.target_branch
        token = command.token or self.config.clone_token
        username = self.config.clone_username
        remote_url = spec.remote_url
        secrets = [s for s in (token, command.token, self.config.clone_token, self.config.auth_token) if s]
        try:
            if remote_url is not None:
                if not remote_url.startswith(("https://", "http://")):
                    raise ValueError("pushSpec.remoteUrl must be an http(s) URL")
                remote_url, url_user, url_password = strip_userinfo(remote_url)
                if url_password:
                    secrets.append(url_password)
                    token = url_password
                    username = url_user or username
            git = Git(GitCredentials(username, token), timeout=self.config.git_timeout, base_env=child_env(os.environ))
            repo = Repository(
                self.config.repo_dir, self.config.clone_url,
                git=make_git(self.config, os.environ), depth=self.config.clone_depth, log=self._log,
            )  # fmt: skip
            async with self._push_lock:
                head = await repo.push(
                    branch=branch, refspec=spec.refspec, force=spec.force, remote_url=remote_url, git=git
                )
        except (GitError, ValueError, OSError) as exc:
            error = scrub(str(exc), secrets)
            self._log.warning("push.failed", branch=branch, error=error)
            self._emit(p.PushErrorEvent(branch_name=branch, error=error))
            return
        self._log.info("push.complete", branch=branch, head_sha=head)
        self._emit(p.PushCompleteEvent(branch_name=branch, head_sha=head))
