"""Warm-pool claim → ``ready`` against a cold create → ``ready``, same repo, same run.

On a real ``sandboxctl serve`` (local provider) with a git server and a
WebSocket control plane on 127.0.0.1. The repository's setup.sh sleeps
``--setup-seconds`` to stand in for a dependency install (the work a pool
saves). Cold runs go first with no pool; then a pool of one is kept and each
claim waits until the pool has a member that is fully warm before it is timed:
the pool reports a member ready once clone and setup.sh are done, and its env
server, started at that moment, has booted and set up its per-repository state
a few seconds later (read from the member's runtime log, a local-provider file).
That is the steady state of a pool whose members wait for claims longer than
an env server takes to boot.

Rows:

* cold and warm: the same create-sandbox request without user env vars; their
  ratio is the issue-6 target (≤ 0.2);
* warm, with user env: the claim brings what control planes usually send (a
  provider key, a token, settings); the runtime hands them to the running env
  server (session env file, OpenCode's auth API), no restart; target ≤ 0.15 x cold;
* warm, with env only a restart applies (an ``OPENCODE_*`` setting): the env
  server is restarted with it, for reference.

Usage: ``python bench/pool_claim.py [--runs 5] [--setup-seconds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from app.services.pool_members import POOL_LABEL  # noqa: E402
from bench.session_stack import print_table, session_stack, session_to_ready  # noqa: E402

WARMED_UP = b'"event": "env_server.warmed_up"'
#: What a control plane typically sends along: a provider key (to OpenCode's auth API), secrets and settings.
USER_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-bench-00000000000000000000",
    "GITHUB_TOKEN": "ghp_bench0000000000000000000000000000",
    "DATABASE_URL": "postgres://app:secret@127.0.0.1:5432/app",
    "NODE_ENV": "development",
}
#: Env only OpenCode's own process acts on: the runtime restarts the env server for it.
RESTART_ENV = {**USER_ENV, "OPENCODE_DISABLE_SHARE": "1"}


async def wait_warm_member(client: SandboxClient, pool: str, data_dir: Path, timeout: float = 180) -> None:
    """Until a member is ready to claim and its env server has warmed up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in await client.list_sandboxes({POOL_LABEL: pool}):
            ref = member["provider_object_id"]
            if member["status"] != "warm" or member["session_id"] is not None or ref is None:
                continue
            with contextlib.suppress(OSError):
                if WARMED_UP in (data_dir / "local" / "sandboxes" / ref / "init.log").read_bytes():
                    return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pool {pool} has no warm member")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--setup-seconds", type=float, default=3.0)
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    warm_env: list[float] = []
    warm_restart: list[float] = []
    setup = f"#!/bin/sh\nsleep {args.setup_seconds}\n"
    async with session_stack("sandbox-bench-pool-", setup, SANDBOX_POOL_INTERVAL="1") as stack:
        client, plane, data_dir = stack.client, stack.plane, stack.workdir / "data"
        for run in range(args.runs):
            seconds, created = await session_to_ready(client, plane, f"cold-{run}", user_env={})
            cold.append(seconds)
            await client.delete(created["sandbox_id"])
        await client.request("PUT", "/v1/pools/bench", json={"repo": {"owner": "acme", "name": "app"}, "target": 1})
        for run in range(args.runs):
            for user_env, into in (({}, warm), (USER_ENV, warm_env), (RESTART_ENV, warm_restart)):
                await wait_warm_member(client, "bench", data_dir)
                seconds, created = await session_to_ready(client, plane, f"warm-{len(into)}-{run}", user_env=user_env)
                into.append(seconds)
                await client.delete(created["sandbox_id"])
        await client.request("DELETE", "/v1/pools/bench")

    print_table(
        {
            "cold: create-sandbox → ready (WS)": cold,
            "warm: claim (create-sandbox) → ready": warm,
            "warm, user env: claim → ready": warm_env,
            "warm, env needing a restart: claim → ready": warm_restart,
        }
    )
    ratio = statistics.median(warm) / statistics.median(cold)
    ratio_env = statistics.median(warm_env) / statistics.median(cold)
    print(f"\nclaim/cold p50 ratio: {ratio:.2f} (target ≤ 0.20), runs={args.runs}, setup.sh={args.setup_seconds}s")
    ratio_restart = statistics.median(warm_restart) / statistics.median(cold)
    print(f"claim with user env/cold p50 ratio: {ratio_env:.2f} (target ≤ 0.15)")
    print(f"claim with env needing a restart/cold p50 ratio: {ratio_restart:.2f} (reference)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
