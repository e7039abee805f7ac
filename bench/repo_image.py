"""Session from a repo image → ``ready`` against a fresh clone + setup.sh → ``ready``, same repo, same run.

Issue target: create from a repo image → ready p50 ≤ half of a fresh clone + setup.

On a real ``sandboxctl serve`` (local provider) with a git server (smart HTTP,
basic auth) and a WebSocket control plane on 127.0.0.1. The repository's
setup.sh stands in for a dependency install: it writes a node_modules-like
tree (``--packages`` x ``--files`` small files plus a package.json each) and
sleeps ``--setup-seconds``. One build makes the repo image (timed, reported);
then cold and repo-image sessions alternate, so drift on a shared machine
falls on both alike. Each first run of a kind checks that it measured what it
claims (setup.sh ran once, the tree is there). Two rows explain the ratio:
the repo image's workspace restore (from the sandbox's events) and OpenCode
starting alone on the host, the floor no repo image can go below.

The default setup (3,100 files and 10 s) stands for a small project's
``npm ci``; with a near-instant setup.sh the ratio approaches the floor's
share instead (OpenCode alone needs 2-3 s here), which is printed too.

Usage: ``python bench/repo_image.py [--runs 5] [--setup-seconds 10] [--packages 100 --files 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from bench.session_ready import opencode_alone  # noqa: E402
from bench.session_stack import session_stack, session_to_ready  # noqa: E402
from tests.fixtures.runtime import OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane  # noqa: E402

MAX_RUNS = 30
#: Seconds the whole benchmark may take, build and every run included.
DEADLINE_SECONDS = 1200.0
BUILD_TIMEOUT = 300.0
READY_TIMEOUT = 180.0


def setup_script(packages: int, files: int, seconds: float) -> str:
    """A setup.sh that writes ``packages`` x (``files`` + 1) files under node_modules, then waits."""
    return f"""#!/bin/sh
set -e
echo setup-ran >> .setup-count
p=0
while [ $p -lt {packages} ]; do
  d=node_modules/pkg-$p
  mkdir -p $d/lib
  printf '{{"name": "pkg-%d", "version": "1.0.%d", "main": "lib/f0.js"}}\\n' $p $p > $d/package.json
  f=0
  while [ $f -lt {files} ]; do
    printf 'module.exports = function f%d(x) {{ return x + %d; }};\\n' $f $p > $d/lib/f$f.js
    f=$((f + 1))
  done
  p=$((p + 1))
done
sleep {seconds}
"""


async def build_image(client: SandboxClient, build_id: str) -> tuple[str, float]:
    """Build a repo image of ``acme/app``; (its ``rimg_`` id, seconds from submit to ready)."""
    started = time.perf_counter()
    await client.request("POST", "/v1/builds", json={"build_id": build_id, "repo": {"owner": "acme", "name": "app"}})
    deadline = time.monotonic() + BUILD_TIMEOUT
    while time.monotonic() < deadline:
        view = await client.request("GET", f"/v1/builds/{build_id}")
        if view["status"] == "ready":
            return view["provider_image_id"], time.perf_counter() - started
        if view["status"] not in ("queued", "building"):
            raise RuntimeError(f"build {build_id} ended {view['status']}: {view['error']}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"build {build_id} not ready in {BUILD_TIMEOUT:.0f} s")


async def image_session_to_ready(
    client: SandboxClient, plane: ControlPlane, session_id: str, image_id: str
) -> tuple[float, dict[str, Any]]:
    """``session_to_ready`` with ``repo_image_id``: same body, same clock, same wait."""
    before = len(plane.received)
    body = {
        "session_id": session_id,
        "repo_owner": "acme",
        "repo_name": "app",
        "control_plane_url": plane.url,
        "sandbox_auth_token": SANDBOX_TOKEN,
        "user_env_vars": OPENCODE_OFFLINE,
        "repo_image_id": image_id,
    }
    started = time.perf_counter()
    created: dict[str, Any] = (await client.request("POST", "/api/create-sandbox", json=body))["data"]
    await plane.wait_for("ready", timeout=READY_TIMEOUT, after=before, sandboxId=created["sandbox_id"])
    return time.perf_counter() - started, created


async def check_workspace(client: SandboxClient, sandbox_id: str, expected_files: int) -> None:
    """setup.sh ran exactly once for this workspace and its tree is whole."""
    result = await client.exec(
        sandbox_id,
        "cd /workspace/app && cat .setup-count | wc -l && find node_modules -type f | wc -l",
        timeout_seconds=60,
    )
    counts = result["stdout"].split()
    if result["exit_code"] != 0 or counts != ["1", str(expected_files)]:
        raise RuntimeError(f"unexpected workspace in {sandbox_id}: {result}")


async def restore_seconds(client: SandboxClient, sandbox_id: str) -> float:
    """Seconds between the sandbox's ``created`` and ``restored`` events: the workspace restore."""
    events = (await client.request("GET", f"/v1/sandboxes/{sandbox_id}/events"))["events"]
    at = {event["kind"]: datetime.fromisoformat(event["at"]) for event in events}
    return (at["restored"] - at["created"]).total_seconds()


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]


def print_table(rows: dict[str, list[float]]) -> None:
    """p50, p90, min and max of each row, in seconds."""
    width = max(len(name) for name in rows)
    print(f"| {'measure (s)':<{width}} |    p50 |    p90 |    min |    max |")
    print(f"|{'-' * (width + 2)}|--------|--------|--------|--------|")
    for name, values in rows.items():
        cells = (statistics.median(values), p90(values), min(values), max(values))
        print(f"| {name:<{width}} | " + " | ".join(f"{v:6.2f}" for v in cells) + " |")


async def run(args: argparse.Namespace) -> None:
    cold: list[float] = []
    warm: list[float] = []
    restore: list[float] = []
    alone: list[float] = []
    expected_files = args.packages * (args.files + 1)
    setup = setup_script(args.packages, args.files, args.setup_seconds)
    async with session_stack("sandbox-bench-repo-image-", setup) as stack:
        client, plane = stack.client, stack.plane
        image_id, build_seconds = await build_image(client, "bench-build")
        for index in range(args.runs):
            seconds, created = await session_to_ready(client, plane, f"cold-{index}")
            cold.append(seconds)
            if index == 0:
                await check_workspace(client, created["sandbox_id"], expected_files)
            await client.delete(created["sandbox_id"])
            seconds, created = await image_session_to_ready(client, plane, f"image-{index}", image_id)
            warm.append(seconds)
            restore.append(await restore_seconds(client, created["sandbox_id"]))
            if index == 0:
                await check_workspace(client, created["sandbox_id"], expected_files)
            await client.delete(created["sandbox_id"])
            alone.append(await opencode_alone(stack.opencode, stack.workdir / f"home-{index}"))
        await client.request("POST", "/api/delete-provider-image", json={"provider_image_id": image_id})

    print(
        f"repo acme/app: setup.sh writes {expected_files} files ({args.packages} packages x "
        f"{args.files + 1}, node_modules-like) and sleeps {args.setup_seconds:g} s for a dependency install; "
        f"local provider, runs={args.runs} each, alternating\n"
    )
    print_table(
        {
            "fresh: create-sandbox → clone + setup.sh → ready (WS)": cold,
            "repo image: create-sandbox (repo_image_id) → ready (WS)": warm,
            "  of which: workspace restore (events created → restored)": restore,
            "floor: OpenCode alone → healthy (no sandbox, no repo)": alone,
        }
    )
    ratio = statistics.median(warm) / statistics.median(cold)
    verdict = "met" if ratio <= 0.5 else "NOT met"
    print(f"\nrepo image / fresh p50 ratio: {ratio:.2f} (target ≤ 0.50: {verdict})")
    print(f"build (submit → ready, clone + setup.sh + save): {build_seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, choices=range(1, MAX_RUNS + 1), metavar=f"1..{MAX_RUNS}")
    parser.add_argument("--setup-seconds", type=float, default=10.0)
    parser.add_argument("--packages", type=int, default=100)
    parser.add_argument("--files", type=int, default=30, help="files per package, besides its package.json")
    args = parser.parse_args()
    if not 0 <= args.setup_seconds <= 60 or not 1 <= args.packages <= 2000 or not 1 <= args.files <= 200:
        parser.error("bounds: --setup-seconds 0..60, --packages 1..2000, --files 1..200")

    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE_SECONDS):
            await run(args)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bounded())


if __name__ == "__main__":
    main()
