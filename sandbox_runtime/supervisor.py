"""The supervisor: boot, then keep the env server and the bridge running.

Lifecycle::

    boot (repo, hooks)  ──build──▶ result line, exit
        │
        ├─ [SESSION_CONFIG_FILE] wait for the claim, switch branch
        ▼
    env server ── healthy ──▶ bridge          (each in its own process group)
        ▲                        │
        └── restart with backoff ┘  past the budget: POST /sandbox/{id}/error, exit 1
                                    bridge exit 0: session over, graceful shutdown, exit 0
    SIGTERM/SIGINT: stop bridge, then env server (grace, then SIGKILL), kill orphans, exit 0
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TextIO

import httpx

from sandbox_runtime import contract as c
from sandbox_runtime.boot import Boot, BootError, child_env, make_repository
from sandbox_runtime.config import ConfigError, RuntimeConfig
from sandbox_runtime.gitcmd import GitError
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.procs import ManagedProcess, become_subreaper, kill_orphans, make_undumpable, reap_orphans
from sandbox_runtime.restart import RestartPolicy

BRIDGE_MODULE = "sandbox_runtime.bridge"
_REAP_INTERVAL = 2.0
_LIVENESS_MISSES = 3
_HEALTH_POLL_INTERVAL = 0.05


class Supervisor:
    """Runs one sandbox's runtime; :meth:`run` returns the process exit code."""

    def __init__(self, env: Mapping[str, str], *, stdout: TextIO | None = None, log: JsonLogger | None = None):
        self._env = dict(env)
        self._stdout = stdout or sys.stdout
        self._log = log or JsonLogger("supervisor")
        self._config: RuntimeConfig | None = None
        self._stop = asyncio.Event()  # SIGTERM/SIGINT
        self._done = asyncio.Event()  # any reason to shut down
        self._outcome = c.EXIT_OK
        self._fatal_error: str | None = None
        self._children: dict[str, ManagedProcess] = {}
        self._env_server_healthy = asyncio.Event()
        self._spawn_lock = asyncio.Lock()  # orphan reaping must not race a spawn (see _reaper)

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
        self._stop.set()
        self._done.set()

    async def _run(self, config: RuntimeConfig) -> int:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        (config.run_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        become_subreaper()
        make_undumpable()
        self._log.info("boot.start", mode=config.boot_mode.value, sandbox_id=config.sandbox_id)
        boot = Boot(config, self._env, self._log)
        if config.boot_mode is c.BootMode.BUILD:
            outcome = await self._until_stopped(boot.build(self._stdout))
            # A build stopped by a signal did not complete: say so with a non-zero exit.
            return c.EXIT_FATAL if outcome is None else outcome
        started = time.monotonic()
        try:
            if await self._until_stopped(self._boot(boot)) is None:
                return await self._shutdown()
        except BootError as exc:
            await self._report_fatal(f"boot failed: {exc}")
            return await self._shutdown()  # start.sh may have left processes behind
        assert self._config is not None
        self._log.info("boot.done", seconds=round(time.monotonic() - started, 3))
        keepers = [
            asyncio.create_task(self._keep_env_server(), name="env-server"),
            asyncio.create_task(self._keep_bridge(), name="bridge"),
            asyncio.create_task(self._reaper(), name="reaper"),
        ]
        await self._done.wait()
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        if self._fatal_error is not None:
            await self._report_fatal(self._fatal_error)
        return await self._shutdown()

    async def _until_stopped(self, coro: Coroutine[Any, Any, int]) -> int | None:
        """Run ``coro`` unless a stop signal arrives first (then cancel it and return None)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    async def _boot(self, boot: Boot) -> int:
        config = boot.config
        await boot.prepare_repository()
        if config.session is None and config.session_config_file is not None:
            claim = await boot.wait_for_claim(config.session_config_file, config.wait_for_session_timeout)
            self._env.update(claim.env)
            self._env[c.SESSION_CONFIG] = claim.session_config.model_dump_json()
            try:
                config = RuntimeConfig.from_env(self._env)
            except ConfigError as exc:
                raise BootError(f"session claim is invalid: {exc}") from None
            self._log.add_secrets(config.secrets)
            boot = Boot(config, self._env, self._log)
            branch = config.effective_branch
            if branch and config.repo_name:
                try:
                    await make_repository(config, self._env, self._log).switch_branch(branch)
                except GitError as exc:
                    raise BootError(str(exc)) from None
        self._config = config
        await boot.run_start_hook()
        return c.EXIT_OK

    # --- children -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> ManagedProcess:
        config = self._config
        assert config is not None
        cwd = config.repo_dir if config.repo_dir.is_dir() else config.workspace_dir
        return ManagedProcess(
            name,
            argv,
            cwd=cwd,
            env=env,
            on_line=lambda line: self._log.relay(name, line),
            pid_file=config.run_dir / f"{name}.pid",
        )

    def _env_server_env(self) -> dict[str, str]:
        config = self._config
        assert config is not None
        env = child_env(self._env)
        # The env server's data (OpenCode: sessions DB) lives in the state dir so a snapshot
        # of the workspace carries the conversation to the restored sandbox.
        env["XDG_DATA_HOME"] = str(config.env_server_state_dir / "data")
        env["XDG_STATE_HOME"] = str(config.env_server_state_dir / "state")
        env.setdefault("OPENCODE_DISABLE_AUTOUPDATE", "1")  # a sandbox must not upgrade itself
        return env

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
        config = self._config
        assert config is not None
        policy = RestartPolicy(config.restart)
        for attempt in range(1_000_000):  # bounded by the restart budget long before this
            proc = self._spawn("env-server", config.env_server_argv, self._env_server_env())
            reason = await self._start(proc)
            if reason is None:
                if await self._wait_healthy(proc, config):
                    policy.on_healthy()
                    self._env_server_healthy.set()
                    reason = await self._watch_env_server(proc, config)
                elif proc.returncode is None:
                    reason = f"not healthy within {config.health_timeout:.0f}s"
                else:
                    reason = f"exited with code {proc.returncode} before becoming healthy"
            await proc.stop(config.stop_grace)
            if not await self._after_crash(proc.name, policy, reason, attempt):
                return

    async def _keep_bridge(self) -> None:
        config = self._config
        assert config is not None
        await self._env_server_healthy.wait()
        policy = RestartPolicy(config.restart)
        for attempt in range(1_000_000):
            proc = self._spawn("bridge", [sys.executable, "-m", BRIDGE_MODULE], self._env)
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
            config = self._config
            assert config is not None
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

    async def _wait_healthy(self, proc: ManagedProcess, config: RuntimeConfig) -> bool:
        url = f"{config.env_server_url}{config.health_path}"
        started = time.monotonic()
        deadline = started + config.health_timeout
        # trust_env=False: loopback must never go through a proxy from the environment.
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline and proc.returncode is None:
                try:
                    # A short per-request timeout: OpenCode accepts connections before it can
                    # answer them, and such an early request may never be answered.
                    response = await client.get(url, timeout=0.5)
                    if response.status_code == 200:
                        self._log.info("env_server.healthy", seconds=round(time.monotonic() - started, 3))
                        return True
                except httpx.HTTPError:
                    pass
                # A fixed short interval: a loopback GET is cheap, and every ms here is boot latency.
                await asyncio.sleep(_HEALTH_POLL_INTERVAL)
        return False

    async def _watch_env_server(self, proc: ManagedProcess, config: RuntimeConfig) -> str:
        """Wait for the env server to exit, or to stop answering health probes (a hang)."""
        exited = asyncio.create_task(proc.wait())
        if config.liveness_interval <= 0:
            return f"exited with code {await exited}"
        url = f"{config.env_server_url}{config.health_path}"
        misses = 0
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                while True:
                    done, _ = await asyncio.wait({exited}, timeout=config.liveness_interval)
                    if done:
                        return f"exited with code {exited.result()}"
                    try:
                        response = await client.get(url, timeout=max(1.0, config.liveness_interval))
                        misses = 0 if response.status_code == 200 else misses + 1
                    except httpx.HTTPError:
                        misses += 1
                    if misses >= _LIVENESS_MISSES:
                        self._log.warning("env_server.unresponsive", misses=misses)
                        return f"stopped answering {config.health_path}"
        finally:
            exited.cancel()

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

    async def _report_fatal(self, error: str) -> None:
        """POST the fatal error to the control plane (best effort, a few attempts)."""
        self._outcome = c.EXIT_FATAL
        error = self._log.scrub(error)
        self._log.error("fatal", error=error)
        config = self._config
        if config is None or not config.control_plane_url or not config.sandbox_id:
            return
        url = f"{config.control_plane_url}/sandbox/{config.sandbox_id}/error"
        headers = {"Authorization": f"Bearer {config.auth_token}"}
        async with httpx.AsyncClient(timeout=10.0) as client:
            for attempt in range(3):
                try:
                    response = await client.post(url, json={"error": error, "fatal": True}, headers=headers)
                    if response.is_success:
                        self._log.info("fatal.reported", status=response.status_code)
                        return
                    self._log.warning("fatal.report_refused", status=response.status_code)
                    if response.status_code < 500:
                        return
                except httpx.HTTPError as exc:
                    self._log.warning("fatal.report_failed", error=type(exc).__name__)
                await asyncio.sleep(0.5 * 2**attempt)


def main() -> int:
    """``python -m sandbox_runtime``: run the supervisor with ``os.environ``."""
    return asyncio.run(Supervisor(os.environ).run())
