"""``python -m sandbox_runtime.bridge``: the bridge process the supervisor starts and restarts.

With ``--session-from-stdin`` (a warm pool member's standby bridge, started before the
session exists) it first reads its whole environment as one JSON object line from stdin,
so that interpreter start-up and imports are paid before the claim instead of after it.
The pipe also keeps the session's secrets out of ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from sandbox_runtime import contract as c
from sandbox_runtime import serverauth
from sandbox_runtime.bridge import SESSION_FROM_STDIN
from sandbox_runtime.bridge.client import EXIT_SIGNALLED, Bridge
from sandbox_runtime.bridge.opencode import OpenCodeClient
from sandbox_runtime.config import ConfigError, RuntimeConfig
from sandbox_runtime.health import LoopbackRequest
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.procs import make_undumpable


def _read_env(line: bytes) -> dict[str, str]:
    """The environment sent by the supervisor.

    Raises:
        ValueError: not a JSON object of strings (also an empty line: the supervisor went away).
    """
    env = json.loads(line)
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the environment must be a JSON object of strings")
    return env


async def _main(argv: list[str]) -> int:
    make_undumpable()  # the tokens in our environment must not be readable by the agent
    log = JsonLogger("bridge")
    if SESSION_FROM_STDIN in argv:
        try:
            env = _read_env(await asyncio.to_thread(sys.stdin.buffer.readline))
        except ValueError as exc:
            log.error("config.invalid", error=f"environment from stdin: {exc}")
            return c.EXIT_CONFIG
        os.environ.clear()
        os.environ.update(env)
    try:
        config = RuntimeConfig.from_env(os.environ)
    except ConfigError as exc:
        log.error("config.invalid", error=str(exc))
        return c.EXIT_CONFIG
    log.add_secrets(config.secrets)
    if config.session is None or not config.control_plane_url:
        log.error("config.invalid", error=f"{c.SESSION_CONFIG} and {c.CONTROL_PLANE_URL} are required")
        return c.EXIT_CONFIG
    # The supervisor made the env server's password before starting us (None: it has none).
    credentials = await asyncio.to_thread(serverauth.load, config.run_dir)
    headers = credentials.headers if credentials else {}
    if credentials:
        log.add_secrets([credentials.password, credentials.authorization])
    opencode = OpenCodeClient(
        config.env_server_url,
        headers=headers,
        health=LoopbackRequest(config.env_server_url + config.health_path, headers=headers),
    )
    bridge = Bridge(config, opencode=opencode, log=log)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bridge.stop, EXIT_SIGNALLED)
    try:
        return await bridge.run()
    finally:
        await opencode.aclose()


def main() -> int:
    """Run the bridge with ``os.environ``; returns the exit code."""
    return asyncio.run(_main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
