"""The env server as the supervisor sees it: its env, its health, its API.

The supervisor decides when to start, restart and replace the env server (see
:mod:`sandbox_runtime.supervisor`); this module answers the questions it asks on the way:
what env does it get, is it healthy yet, is it still alive, how to have it set up (or
drop) its state for the repository ahead of the session, which providers it knows, and
how to hand it a provider's key. Every request carries the env server's basic auth.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from urllib.parse import quote

from sandbox_runtime import contract as c
from sandbox_runtime import sessionenv
from sandbox_runtime.boot import child_env
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.health import LoopbackRequest, wait_until_healthy
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.procs import ManagedProcess
from sandbox_runtime.serverauth import ServerCredentials
from sandbox_runtime.sessionenv import ProviderCatalogue

SESSION_ENV_NAMES = (
    c.SESSION_CONFIG,
    c.SESSION_CONFIG_FILE,
    c.WAIT_FOR_SESSION_TIMEOUT,
    c.CONTROL_PLANE_URL,
    c.SANDBOX_ID,
)
"""Names of the session, not of the sandbox: the agent has no use for them, and without them
a warm sandbox's env server started before its claim has the env a cold start would give it
(a claim binds the caller's ``SANDBOX_ID``)."""
LIVENESS_MISSES = 3
"""Health probes in a row a running env server may miss before it counts as hung."""
# OpenCode sets up a directory's state (project, config, plugins, snapshot repository, file
# watcher) on the first request about it, and forgets it on ``/instance/dispose``.
_WARM_UP_PATH = "/path"
_DROP_STATE_PATH = "/instance/dispose"
_CATALOGUE_PATH = "/api/integration"  # per provider: the env vars it reads (models.dev's list)
_AUTH_PATH = "/auth/{provider}"


def env_server_env(
    env: Mapping[str, str], config: RuntimeConfig, credentials: ServerCredentials | None
) -> dict[str, str]:
    """Hooks' env (no secrets) minus :data:`SESSION_ENV_NAMES`, plus the env server's own settings."""
    server_env = child_env(env)
    for name in SESSION_ENV_NAMES:
        server_env.pop(name, None)
    # The env server's data (OpenCode: sessions DB) lives in the state dir so a snapshot
    # of the workspace carries the conversation to the restored sandbox.
    server_env["XDG_DATA_HOME"] = str(config.env_server_state_dir / "data")
    server_env["XDG_STATE_HOME"] = str(config.env_server_state_dir / "state")
    server_env.setdefault("OPENCODE_DISABLE_AUTOUPDATE", "1")  # a sandbox must not upgrade itself
    server_env.update(sessionenv.shell_hooks(config.session_env_file, server_env))
    if credentials is not None:
        server_env.update(credentials.server_env())
    return server_env


class EnvServerApi:
    """The env server on loopback, as the supervisor calls it (raw requests: no HTTP library to import)."""

    def __init__(self, config: RuntimeConfig, credentials: ServerCredentials | None) -> None:
        self.config = config
        self._headers = credentials.headers if credentials else {}

    def request(self, path: str, method: str = "GET", body: bytes | None = None) -> LoopbackRequest:
        """A request to ``path`` with the env server's credentials."""
        return LoopbackRequest(self.config.env_server_url + path, method, headers=self._headers, body=body)

    async def wait_healthy(self, proc: ManagedProcess) -> bool:
        """True once ``proc`` answers its health check; False if it exits or the health timeout passes.

        Probed at a relaxed pace: nothing waits on the supervisor's view of a booting env
        server (the bridge probes it itself), so the CPU is better left to the env server.
        """
        return await wait_until_healthy(
            self.request(self.config.health_path),
            timeout=self.config.health_timeout,
            alive=lambda: proc.returncode is None,
            max_interval=0.2,
        )

    async def watch(self, proc: ManagedProcess, log: JsonLogger) -> str:
        """Wait for a healthy env server to exit, or to stop answering health probes (a hang); returns why."""
        config = self.config
        exited = asyncio.create_task(proc.wait())
        if config.liveness_interval <= 0:
            return f"exited with code {await exited}"
        probe = self.request(config.health_path)
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

    async def warm_up(self) -> int | None:
        """Have a healthy env server set up its state for the repository now; the answer's status.

        Otherwise OpenCode does it (hundreds of ms of CPU) on the bridge's ``POST /session``.
        Any answer will do (another env server may well answer 404); None when none came.
        """
        return await self.request(_WARM_UP_PATH).status(timeout=60)

    async def drop_warm_state(self) -> int | None:
        """Make the env server forget the state :meth:`warm_up` set up (it is set up again on demand)."""
        return await self.request(_DROP_STATE_PATH, "POST").status(timeout=30)

    async def provider_catalogue(self) -> ProviderCatalogue | None:
        """Which env vars each provider reads; None when the env server does not say (not OpenCode)."""
        answer = await self.request(_CATALOGUE_PATH).fetch(timeout=60)
        if answer is None or answer[0] != 200:
            return None
        try:
            return ProviderCatalogue.from_integrations(json.loads(answer[1]))
        except ValueError:
            return None

    async def set_provider_keys(self, keys: Mapping[str, str]) -> list[str]:
        """Hand each provider its API key (OpenCode: ``PUT /auth/{provider}``); returns those refused."""

        async def put(provider: str, key: str) -> bool:
            body = json.dumps({"type": "api", "key": key}).encode()
            path = _AUTH_PATH.format(provider=quote(provider, safe=""))
            return await self.request(path, "PUT", body).status(timeout=30) == 200

        results = await asyncio.gather(*(put(provider, key) for provider, key in keys.items()))
        return sorted(provider for provider, ok in zip(keys, results, strict=True) if not ok)
