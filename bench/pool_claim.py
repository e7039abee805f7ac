"""Warm-pool claim → ``ready`` against a cold create → ``ready``, same repo, same run.

On a real ``sandboxctl serve`` (local provider) with a git server and a
WebSocket control plane on 127.0.0.1. The repository's setup.sh sleeps
``--setup-seconds`` to stand in for a dependency install (the work a pool
saves). Cold runs go first with no pool; then a pool of one is kept and each
claim waits until the pool reports a ready member before it is timed.

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
from bench.session_stack import print_table, session_stack  # noqa: E402
from tests.fixtures.runtime import OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane  # noqa: E402


async def wait_ready_member(client: SandboxClient, pool: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = await client.request("GET", f"/v1/pools/{pool}")
        if view["ready"] >= 1:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pool {pool} has no ready member")


async def one_session(client: SandboxClient, plane: ControlPlane, session_id: str) -> tuple[float, str]:
    before = len(plane.received)
    body = {
        "session_id": session_id,
        "repo_owner": "acme",
        "repo_name": "app",
        "control_plane_url": plane.url,
        "sandbox_auth_token": SANDBOX_TOKEN,
        "user_env_vars": OPENCODE_OFFLINE,
    }
    started = time.perf_counter()
    created = (await client.request("POST", "/api/create-sandbox", json=body))["data"]
    await plane.wait_for("ready", timeout=180, after=before, sandboxId=created["sandbox_id"])
    return time.perf_counter() - started, str(created["sandbox_id"])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--setup-seconds", type=float, default=3.0)
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    setup = f"#!/bin/sh\nsleep {args.setup_seconds}\n"
    async with session_stack("sandbox-bench-pool-", setup, SANDBOX_POOL_INTERVAL="1") as stack:
        client, plane = stack.client, stack.plane
        for run in range(args.runs):
            seconds, sandbox_id = await one_session(client, plane, f"cold-{run}")
            cold.append(seconds)
            await client.delete(sandbox_id)
        await client.request("PUT", "/v1/pools/bench", json={"repo": {"owner": "acme", "name": "app"}, "target": 1})
        for run in range(args.runs):
            await wait_ready_member(client, "bench")
            seconds, sandbox_id = await one_session(client, plane, f"warm-{run}")
            warm.append(seconds)
            await client.delete(sandbox_id)
        await client.request("DELETE", "/v1/pools/bench")

    print_table({"cold: create-sandbox → ready (WS)": cold, "warm: claim (create-sandbox) → ready": warm})
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"\nclaim/cold p50 ratio: {ratio:.2f} (target ≤ 0.20), runs={args.runs}, setup.sh={args.setup_seconds}s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
