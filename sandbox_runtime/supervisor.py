"""The supervisor: boot, then keep the env server and the bridge running.

Lifecycle::

    boot: repository, setup.sh ──build──▶ result line, exit
        │
        ├─ session known ──▶ start.sh ──▶ env server + bridge, started together
        │
        └─ warm pool (SESSION_CONFIG_FILE) ──▶ env server (the sandbox's base env), its
           per-repository state warmed up, and a standby bridge ──▶ wait for the claim ──▶
           merge the claim's env, hand its env vars to the env server, [switch branch],
           start.sh ──▶ the standby bridge gets the session's env (stdin) and goes

    env server ── restart with backoff ──┐   past the budget: POST /sandbox/{id}/error, exit 1
    bridge     ── restart with backoff ──┘   bridge exit 0: session over, graceful shutdown, exit 0
    SIGTERM/SIGINT: stop bridge, then env server (grace, then SIGKILL), kill orphans, exit 0

The env server runs with a password made at every start (:mod:`sandbox_runtime.serverauth`).

The bridge starts together with the env server rather than after it: its interpreter
start-up and imports overlap the env server's boot, and it connects to the control
plane meanwhile; only its ``POST /session`` waits for the env server to be healthy
(the bridge probes that itself, cheaply, see :mod:`sandbox_runtime.health`).

Warm pool, what a claim changes. The env server never sees the session's runtime
names (secrets, ``SESSION_CONFIG``, ``CONTROL_PLANE_URL``, ...; see
:func:`sandbox_runtime.envserver.env_server_env`), so the env server a warm sandbox
started before its claim has exactly the env a cold start would give it, but for the
claim's own env vars (user env vars). Those reach the running env server without a
restart: the agent's shells load them from the session env file, provider keys go
through OpenCode's auth API (see :mod:`sandbox_runtime.sessionenv`). Only names that
just OpenCode's own process can act on (proxies, ``OPENCODE_*``, ...) restart it with
the merged env (not counted as a crash).
``start.sh`` runs after the claim (it may need the session's env) and before the
bridge, so the session's first prompt still finds whatever start.sh started, as in a
cold boot; the pre-started env server is kept while start.sh runs. Because OpenCode
caches a repository's configuration in the per-directory state the warm-up created
before the claim, that state is dropped again (``POST /instance/dispose``) when
start.sh ran or the branch changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

from sandbox_runtime import contract as c
from sandbox_runtime import sessionenv, warm
from sandbox_runtime.boot import Boot, BootError, make_repository
from sandbox_runtime.bridge import SESSION_FROM_STDIN
from sandbox_runtime.config import ConfigError, RuntimeConfig
from sandbox_runtime.envserver import EnvServerApi, env_server_env
from sandbox_runtime.fatal import report_fatal
from sandbox_runtime.gitcmd import GitError
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.procs import ManagedProcess, become_subreaper, kill_orphans, make_undumpable, reap_orphans
from sandbox_runtime.restart import RestartPolicy
from sandbox_runtime.serverauth import ServerCredentials

BRIDGE_ARGV = [sys.executable, "-m", "sandbox_runtime.bridge"]
_REAP_INTERVAL = 2.0

T = TypeVar("T")


async def _unless(coro: Coroutine[Any, Any, T], event: asyncio.Event) -> T | None:
    """Run ``coro`` unless ``event`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return None if task.cancelled() else task.result()


class Supervisor:
    """Runs one sandbox's runtime; :meth:`run` returns the process exit code."""

    def __init__(self, env: Mapping[str, str], *, stdout: TextIO | None = None, log: JsonLogger | None = None):
        self._env = dict(env)
        self._stdout = stdout or sys.stdout
        self._log = log or JsonLogger("supervisor")
        self._config: RuntimeConfig | None = None
        self._done = asyncio.Event()  # any reason to shut down: signal, session over, fatal
        self._outcome = c.EXIT_OK
        self._fatal_error: str | None = None
        self._children: dict[str, ManagedProcess] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._spawn_lock = asyncio.Lock()  # orphan reaping must not race a spawn (see _reaper)
        self._env_server_healthy = asyncio.Event()  # the current env server answered its health check
        self._env_server_replace = asyncio.Event()  # a new env server (new env) is asked for
        self._env_server_spawning = asyncio.Condition()  # notified when the keeper spawns again
        self._env_server_started_env: dict[str, str] | None = None
        self._credentials: ServerCredentials | None = None  # the env server's, made at every start

    @property
    def config(self) -> RuntimeConfig:
        """The current configuration (a warm sandbox's changes with its claim)."""
        assert self._config is not None, "run() first"
        return self._config

    @property
    def api(self) -> EnvServerApi:
        """The env server's API, with its credentials."""
        return EnvServerApi(self.config, self._credentials)

    # --- entry ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Boot, supervise until the session ends or a signal arrives, shut down."""
        try:
            config = RuntimeConfig.from_env(self._env)
        except ConfigError as exc:
            self._log.error("config.invalid", error=str(exc))
            return c.EXIT_CONFIG
        self._config = config
        self._log.add_secrets(config.secrets)
        if config.boot_mode is not c.BootMode.BUILD and not (config.session or config.session_config_file):
            self._log.error("config.invalid", error=f"{c.SESSION_CONFIG} or {c.SESSION_CONFIG_FILE} is required")
            return c.EXIT_CONFIG
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run(config)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        self._log.info("signal", signal=signal.Signals(sig).name)
        self._done.set()

    async def _run(self, config: RuntimeConfig) -> int:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        (config.run_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        become_subreaper()
        make_undumpable()
        self._log.info("boot.start", mode=config.boot_mode.value, sandbox_id=config.sandbox_id)
        boot = Boot(config, self._env, self._log)
        if config.boot_mode is c.BootMode.BUILD:
            outcome = await _unless(boot.build(self._stdout), self._done)
            # A build stopped by a signal did not complete: say so with a non-zero exit.
            return c.EXIT_FATAL if outcome is None else outcome
        self._credentials = await asyncio.to_thread(warm.prepare_files, config, self._env, self._log)
        started = time.monotonic()
        try:
            booted = await _unless(self._boot(boot), self._done)
        except BootError as exc:
            self._fatal_error = f"boot failed: {exc}"
            booted = None
        if booted:
            self._log.info("boot.done", seconds=round(time.monotonic() - started, 3))
            await self._done.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._fatal_error is not None:
            self._outcome = c.EXIT_FATAL
            error = self._log.scrub(self._fatal_error)
            self._log.error("fatal", error=error)
            await report_fatal(self.config, error, self._log)
        return await self._shutdown()  # start.sh may have left processes behind, even after a failed boot

    async def _boot(self, boot: Boot) -> bool:
        config = boot.config
        await boot.prepare_repository()
        standby: ManagedProcess | None = None
        if config.session is None and config.session_config_file is not None:
            standby = await self._boot_warm(boot, config.session_config_file)
        else:
            await boot.run_start_hook()
            self._start_env_server()
        self._tasks.append(asyncio.create_task(self._keep_bridge(standby), name="bridge"))
        return True

    async def _boot_warm(self, boot: Boot, claim_file: Path) -> ManagedProcess | None:
        """Warm pool: the env server boots (and warms up) before the claim; see the module docstring.

        Returns the standby bridge, started before the claim too, to be handed the session.
        """
        self._start_env_server()
        warmup = asyncio.create_task(self._warm_up_env_server(), name="env-server-warmup")
        self._tasks.append(warmup)
        standby = self._spawn("bridge", [*BRIDGE_ARGV, SESSION_FROM_STDIN], self._env, stdin=True)
        standby_started = await self._start(standby) is None  # else one starts the usual way later
        claim = await boot.wait_for_claim(claim_file, boot.config.wait_for_session_timeout)
        self._env.update(claim.env)
        self._env[c.SESSION_CONFIG] = claim.session_config.model_dump_json()
        try:
            config = RuntimeConfig.from_env(self._env)
        except ConfigError as exc:
            raise BootError(f"session claim is invalid: {exc}") from None
        self._log.add_secrets(config.secrets)
        self._config = config
        replaced = await self._hand_over_claim_env(warmup)
        switched = False
        branch = config.effective_branch
        if config.repo_name:
            repo = make_repository(config, self._env, self._log)
            base_sha = config.session.base_sha if config.session else None
            try:
                if branch:
                    switched = await repo.switch_branch(branch)
                if base_sha:
                    await repo.check_out_commit(base_sha, branch)
                    switched = True
            except GitError as exc:
                raise BootError(str(exc)) from None
        ran_start = await Boot(config, self._env, self._log).run_start_hook()
        if (switched or ran_start) and not replaced and (await warmup).warmed:
            # The warmed-up state holds the configuration start.sh or the branch may have changed.
            self._log.info("env_server.warm_state_dropped", status=await self.api.drop_warm_state())
        return standby if standby_started else None

    async def _hand_over_claim_env(self, warmup: asyncio.Task[warm.WarmUp]) -> bool:
        """Give the running env server the claim's env vars; True when that took a restart."""
        started = self._env_server_started_env
        if started is None:  # not spawned yet: it will start with the claim's env
            return False
        new_vars = sessionenv.changed(started, env_server_env(self._env, self.config, self._credentials))
        if not new_vars or not await warm.hand_over_claim_env(new_vars, warmup, self.api, self._log):
            return False
        warmup.cancel()
        await self._replace_env_server()
        return True

    def _start_env_server(self) -> None:
        self._tasks.append(asyncio.create_task(self._keep_env_server(), name="env-server"))
        self._tasks.append(asyncio.create_task(self._reaper(), name="reaper"))

    # --- children -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], *, stdin: bool = False) -> ManagedProcess:
        config = self.config
        cwd = config.repo_dir if config.repo_dir.is_dir() else config.workspace_dir
        return ManagedProcess(
            name,
            argv,
            cwd=cwd,
            env=env,
            on_line=lambda line: self._log.relay(name, line),
            pid_file=config.run_dir / f"{name}.pid",
            stdin=stdin,
        )

    async def _start(self, proc: ManagedProcess) -> str | None:
        """Start ``proc``; None on success, else the reason it could not start."""
        async with self._spawn_lock:
            try:
                await proc.start()
            except OSError as exc:
                return f"cannot start: {exc}"
        self._children[proc.name] = proc
        self._log.info("child.started", child=proc.name, pid=proc.pid)
        return None

    async def _keep_env_server(self) -> None:
        policy = RestartPolicy(self.config.restart)
        crashes = 0
        while True:
            config = self.config
            async with self._env_server_spawning:
                self._env_server_replace.clear()
                self._env_server_spawning.notify_all()
            env = self._env_server_started_env = env_server_env(self._env, config, self._credentials)
            proc = self._spawn("env-server", config.env_server_argv, env)
            reason = await self._start(proc)
            if reason is None:
                reason = await _unless(self._run_env_server(proc, config, policy), self._env_server_replace)
            self._env_server_healthy.clear()
            await proc.stop(config.stop_grace)
            if reason is None:
                self._log.info("env_server.replaced")  # asked for (a new env): not a crash
                continue
            if not await self._after_crash(proc.name, policy, reason, crashes):
                return
            crashes += 1

    async def _run_env_server(self, proc: ManagedProcess, config: RuntimeConfig, policy: RestartPolicy) -> str:
        """Wait until ``proc`` is healthy, then watch it; returns why it has to be restarted."""
        started = time.monotonic()
        if not await self.api.wait_healthy(proc):
            if proc.returncode is None:
                return f"not healthy within {config.health_timeout:.0f}s"
            return f"exited with code {proc.returncode} before becoming healthy"
        self._log.info("env_server.healthy", seconds=round(time.monotonic() - started, 3))
        policy.on_healthy()
        self._env_server_healthy.set()
        return await self.api.watch(proc, self._log)

    async def _replace_env_server(self) -> None:
        """Restart the env server with the current env; returns once the old one is gone."""
        self._log.info("env_server.replacing", reason="the session brings env only a restart applies")
        async with self._env_server_spawning:
            self._env_server_replace.set()
            await self._env_server_spawning.wait_for(lambda: not self._env_server_replace.is_set())

    async def _warm_up_env_server(self) -> warm.WarmUp:
        """Once the env server is healthy, warm it up before the claim (see :func:`warm.warm_up`)."""
        await self._env_server_healthy.wait()
        return await warm.warm_up(self.api, self._log)

    async def _keep_bridge(self, standby: ManagedProcess | None = None) -> None:
        """Keep the bridge running; a warm sandbox's ``standby`` bridge is handed the session first."""
        config = self.config
        policy = RestartPolicy(config.restart)
        for attempt in itertools.count():
            if standby is not None:
                proc, standby = standby, None
                # The whole env, secrets included, goes through the pipe (see the bridge's __main__).
                env_line = json.dumps(self._env).encode() + b"\n"
                reason = None if await proc.send_and_close(env_line) else "exited before the session came"
            else:
                proc = self._spawn("bridge", BRIDGE_ARGV, self._env)
                reason = await self._start(proc)
            if reason is None:
                policy.on_healthy()
                code = await proc.wait()
                if code == c.EXIT_OK:
                    self._log.info("session.over", reason="bridge exited 0")
                    self._done.set()
                    return
                reason = f"exited with code {code}"
            await proc.stop(config.stop_grace)
            if not await self._after_crash(proc.name, policy, reason, attempt):
                return

    async def _after_crash(self, name: str, policy: RestartPolicy, reason: str, attempt: int) -> bool:
        """Apply the restart policy; False when the keeper must stop."""
        if self._done.is_set():
            return False
        delay = policy.on_crash()
        if delay is None:
            config = self.config
            self._fatal_error = (
                f"{name} failed {config.restart.max_restarts + 1} times within "
                f"{config.restart.window:.0f}s; last: {reason}"
            )
            self._log.error("child.gave_up", child=name, reason=reason)
            self._outcome = c.EXIT_FATAL
            self._done.set()
            return False
        self._log.warning("child.crashed", child=name, reason=reason, restart_in=round(delay, 3), attempt=attempt + 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=delay)
        return not self._done.is_set()

    async def _reaper(self) -> None:
        """Reap zombies of orphans reparented to us (we are a subreaper, maybe PID 1)."""
        while not self._done.is_set():
            async with self._spawn_lock:
                reap_orphans(self._managed_pids())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout=_REAP_INTERVAL)

    def _managed_pids(self) -> set[int]:
        return {p.pid for p in self._children.values() if p.pid is not None}

    # --- ending ---------------------------------------------------------------------------

    async def _shutdown(self) -> int:
        config = self._config
        grace = config.stop_grace if config else 10.0
        for name in ("bridge", "env-server"):  # the bridge first: it may still flush events
            proc = self._children.get(name)
            if proc is not None:
                code = await proc.stop(grace)
                self._log.info("child.stopped", child=name, returncode=code)
        killed = kill_orphans(set())
        if killed:
            self._log.info("orphans.killed", pids=killed)
        if config is not None:
            with contextlib.suppress(OSError):
                (config.run_dir / "supervisor.pid").unlink()
        self._log.info("supervisor.exit", code=self._outcome)
        return self._outcome


def main() -> int:
    """``python -m sandbox_runtime``: run the supervisor with ``os.environ``."""
    return asyncio.run(Supervisor(os.environ).run())
