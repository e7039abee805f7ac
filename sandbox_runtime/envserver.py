"""The env server as the supervisor sees it: its env, its health, its per-repository state.

The supervisor decides when to start, restart and replace the env server (see
:mod:`sandbox_runtime.supervisor`); this module answers the questions it asks on the way:
what env does it get, is it healthy yet, is it still alive, and how to have it set up
(or drop) its state for the repository ahead of the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from sandbox_runtime import contract as c
from sandbox_runtime.boot import child_env
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.health import LoopbackRequest, wait_until_healthy
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.procs import ManagedProcess

SESSION_ENV_NAMES = (c.SESSION_CONFIG, c.SESSION_CONFIG_FILE, c.WAIT_FOR_SESSION_TIMEOUT, c.CONTROL_PLANE_URL)
"""Names of the session, not of the sandbox: the agent has no use for them, and without them
a warm sandbox's env server started before its claim has the env a cold start would give it."""
LIVENESS_MISSES = 3
"""Health probes in a row a running env server may miss before it counts as hung."""
# OpenCode sets up a directory's state (project, config, plugins, snapshot repository, file
# watcher) on the first request about it, and forgets it on ``/instance/dispose``.
_WARM_UP_PATH = "/path"
_DROP_STATE_PATH = "/instance/dispose"


def env_server_env(env: Mapping[str, str], config: RuntimeConfig) -> dict[str, str]:
    """Hooks' env (no secrets) minus :data:`SESSION_ENV_NAMES`, plus the env server's own dirs."""
    server_env = child_env(env)
    for name in SESSION_ENV_NAMES:
        server_env.pop(name, None)
    # The env server's data (OpenCode: sessions DB) lives in the state dir so a snapshot
    # of the workspace carries the conversation to the restored sandbox.
    server_env["XDG_DATA_HOME"] = str(config.env_server_state_dir / "data")
    server_env["XDG_STATE_HOME"] = str(config.env_server_state_dir / "state")
    server_env.setdefault("OPENCODE_DISABLE_AUTOUPDATE", "1")  # a sandbox must not upgrade itself
    return server_env


async def wait_healthy(proc: ManagedProcess, config: RuntimeConfig) -> bool:
    """True once ``proc`` answers its health check; False if it exits or the health timeout passes.

    Probed at a relaxed pace: nothing waits on the supervisor's view of a booting env
    server (the bridge probes it itself), so the CPU is better left to the env server.
    """
    probe = LoopbackRequest(config.env_server_url + config.health_path)
    return await wait_until_healthy(
        probe, timeout=config.health_timeout, alive=lambda: proc.returncode is None, max_interval=0.2
    )


async def watch(proc: ManagedProcess, config: RuntimeConfig, log: JsonLogger) -> str:
    """Wait for a healthy env server to exit, or to stop answering health probes (a hang); returns why."""
    exited = asyncio.create_task(proc.wait())
    if config.liveness_interval <= 0:
        return f"exited with code {await exited}"
    probe = LoopbackRequest(config.env_server_url + config.health_path)
    misses = 0
    try:
        while True:
            done, _ = await asyncio.wait({exited}, timeout=config.liveness_interval)
            if done:
                return f"exited with code {exited.result()}"
            misses = 0 if await probe(max(1.0, config.liveness_interval)) else misses + 1
            if misses >= LIVENESS_MISSES:
                log.warning("env_server.unresponsive", misses=misses)
                return f"stopped answering {config.health_path}"
    finally:
        exited.cancel()


async def warm_up(config: RuntimeConfig) -> int | None:
    """Have a healthy env server set up its state for the repository now; the answer's status.

    Otherwise OpenCode does it (hundreds of ms of CPU) on the bridge's ``POST /session``.
    Any answer will do (another env server may well answer 404); None when none came.
    """
    return await LoopbackRequest(config.env_server_url + _WARM_UP_PATH).status(timeout=60)


async def drop_warm_state(config: RuntimeConfig) -> int | None:
    """Make the env server forget the state :func:`warm_up` set up (it is set up again on demand)."""
    return await LoopbackRequest(config.env_server_url + _DROP_STATE_PATH, "POST").status(timeout=30)
