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
from bench.session_stack import print_table, session_stack, session_to_ready  # noqa: E402


async def wait_ready_member(client: SandboxClient, pool: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = await client.request("GET", f"/v1/pools/{pool}")
        if view["ready"] >= 1:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pool {pool} has no ready member")


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
            seconds, created = await session_to_ready(client, plane, f"cold-{run}")
            cold.append(seconds)
            await client.delete(created["sandbox_id"])
        await client.request("PUT", "/v1/pools/bench", json={"repo": {"owner": "acme", "name": "app"}, "target": 1})
        for run in range(args.runs):
            await wait_ready_member(client, "bench")
            seconds, created = await session_to_ready(client, plane, f"warm-{run}")
            warm.append(seconds)
            await client.delete(created["sandbox_id"])
        await client.request("DELETE", "/v1/pools/bench")

    print_table({"cold: create-sandbox → ready (WS)": cold, "warm: claim (create-sandbox) → ready": warm})
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"\nclaim/cold p50 ratio: {ratio:.2f} (target ≤ 0.20), runs={args.runs}, setup.sh={args.setup_seconds}s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
