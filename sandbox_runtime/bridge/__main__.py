"""``python -m sandbox_runtime.bridge``: the bridge process the supervisor starts and restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sandbox_runtime import contract as c
from sandbox_runtime.bridge.client import EXIT_SIGNALLED, Bridge
from sandbox_runtime.bridge.opencode import OpenCodeClient
from sandbox_runtime.config import ConfigError, RuntimeConfig
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.procs import make_undumpable


async def _main() -> int:
    make_undumpable()  # the tokens in our environment must not be readable by the agent
    log = JsonLogger("bridge")
    try:
        config = RuntimeConfig.from_env(os.environ)
    except ConfigError as exc:
        log.error("config.invalid", error=str(exc))
        return c.EXIT_CONFIG
    log.add_secrets(config.secrets)
    if config.session is None or not config.control_plane_url:
        log.error("config.invalid", error=f"{c.SESSION_CONFIG} and {c.CONTROL_PLANE_URL} are required")
        return c.EXIT_CONFIG
    opencode = OpenCodeClient(config.env_server_url)
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
    return asyncio.run(_main())


if __name__ == "__main__":
    sys.exit(main())
