"""The env server of a warm sandbox: set up before the claim, handed the claim's env after it.

Before the claim (also for a cold start, where the same files simply stay empty):
:func:`prepare_files` makes the env server's password and the session env file its shells
load. Once the env server is healthy, :func:`warm_up` has it set up its state for the
repository and asks which env vars its providers read. At the claim,
:func:`hand_over_claim_env` gives it the session's new env vars without a restart where it
can (see :mod:`sandbox_runtime.sessionenv`) and says when only a restart will do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox_runtime import serverauth, sessionenv
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.envserver import EnvServerApi
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.serverauth import ServerCredentials
from sandbox_runtime.sessionenv import ProviderCatalogue


@dataclass(frozen=True)
class WarmUp:
    """What warming up gave: the repository state set up, and the provider catalogue."""

    warmed: bool = False
    catalogue: ProviderCatalogue | None = None


def prepare_files(config: RuntimeConfig, env: Mapping[str, str], log: JsonLogger) -> ServerCredentials:
    """The env server's new password, and the session env file (no session vars yet) its shells load."""
    credentials = serverauth.create(config.run_dir)
    log.add_secrets([credentials.password, credentials.authorization])
    sessionenv.write(config.session_env_file, {})
    home = env.get("HOME")
    if home:
        sessionenv.install_profile_hooks(Path(home), config.session_env_file)
    return credentials


async def warm_up(api: EnvServerApi, log: JsonLogger) -> WarmUp:
    """Have a healthy env server set up its repository state, and learn its providers' env vars."""
    started = time.monotonic()
    status = await api.warm_up()
    catalogue = await api.provider_catalogue()
    providers = len(catalogue.env_names) if catalogue else None
    log.info("env_server.warmed_up", status=status, providers=providers, seconds=round(time.monotonic() - started, 3))
    return WarmUp(warmed=status is not None, catalogue=catalogue)


async def _finished(warmup: asyncio.Task[WarmUp], timeout: float) -> WarmUp:
    """The warm-up's outcome, once done (a claim may overtake it); nothing when it failed or takes too long."""
    await asyncio.wait({warmup}, timeout=timeout)  # leaves it running when it takes too long
    if not warmup.done() or warmup.cancelled() or warmup.exception() is not None:
        return WarmUp()
    return warmup.result()


async def hand_over_claim_env(
    new_vars: Mapping[str, str], warmup: asyncio.Task[WarmUp], api: EnvServerApi, log: JsonLogger
) -> bool:
    """Give the running env server a claim's ``new_vars``; True when only a restart can apply them.

    The env file is written either way (the agent's shells read it, also after a restart).
    """
    config = api.config
    catalogue = (await _finished(warmup, config.health_timeout)).catalogue
    plan = sessionenv.plan(new_vars, catalogue, config.session.provider if config.session else "")
    await asyncio.to_thread(sessionenv.write, config.session_env_file, plan.shell)
    refused = [] if plan.restart else await api.set_provider_keys(plan.provider_keys)
    log.info(
        "session_env.handed_over",
        names=sorted(plan.shell),
        providers=sorted(plan.provider_keys),
        restart_for=list(plan.restart),
        refused=refused,
    )
    return bool(plan.restart or refused)
