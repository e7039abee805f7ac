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
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from bench.session_ready import OFFLINE  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402
from tests.fixtures.runtime import GIT_TOKEN, SANDBOX_TOKEN, ControlPlane, GitHttpServer, find_opencode  # noqa: E402


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
        "user_env_vars": OFFLINE,
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
    binary = find_opencode()
    if binary is None:
        raise SystemExit("OpenCode is not installed: run scripts/install-opencode.sh")
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-bench-pool-"))
    workdir.chmod(0o711)
    git = GitHttpServer(workdir / "git").start()
    setup = f"#!/bin/sh\nsleep {args.setup_seconds}\n"
    git.create_repo("acme", "app", {"README.md": "bench\n", ".openinspect/setup.sh": setup})
    plane = await ControlPlane().start()
    secret = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
    env.update(
        SANDBOX_API_SECRET=secret,
        SANDBOX_PROVIDER="local",
        SANDBOX_DATA_DIR=str(workdir / "data"),
        SANDBOX_LOG_LEVEL="warning",
        ALLOWED_CONTROL_PLANE_HOSTS="127.0.0.1",
        VCS_CLONE_URL_TEMPLATE=git.url_template,
        SANDBOX_VCS_CLONE_TOKEN=GIT_TOKEN,
        SANDBOX_LOCAL_OPENCODE_DIR=str(binary.parent.parent),
        SANDBOX_POOL_INTERVAL="1",
    )
    server = LiveServer(env, free_port(), workdir / "server.log")
    server.start()
    cold: list[float] = []
    warm: list[float] = []
    try:
        async with SandboxClient(server.url, secret.encode()) as client:
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
    finally:
        server.stop()
        await plane.stop()
        git.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def row(name: str, values: list[float]) -> str:
        return f"| {name:<40} | {statistics.median(values):6.2f} | {min(values):6.2f} | {max(values):6.2f} |"

    print("| measure (s)                              |    p50 |    min |    max |")
    print("|------------------------------------------|--------|--------|--------|")
    print(row("cold: create-sandbox → ready (WS)", cold))
    print(row("warm: claim (create-sandbox) → ready", warm))
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"\nclaim/cold p50 ratio: {ratio:.2f} (target ≤ 0.20), runs={args.runs}, setup.sh={args.setup_seconds}s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
