"""Runtime boot latency: OpenCode alone → healthy (the baseline) vs supervisor start → ``ready``.

    .venv/bin/python bench/runtime_boot.py [--runs 5]

Both halves run in the same process, on the same machine, with the same OpenCode
binary and environment:

* baseline: ``opencode serve`` started directly, time until ``GET /global/health``
  answers 200 (polled like the supervisor does: 0.5 s per-request timeout, every 50 ms);
* ours: ``python -m sandbox_runtime`` (fresh boot: shallow clone over local smart
  HTTP with the credential helper, hooks absent) until the test control plane
  receives ``ready`` on the session WebSocket.

The difference is the runtime's overhead: clone, Python start-up of two processes,
the env server session, the WebSocket handshake. Needs scripts/install-opencode.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.runtime import (  # noqa: E402
    ControlPlane,
    GitHttpServer,
    RuntimeProcess,
    find_opencode,
    free_port,
    make_runtime_env,
    opencode_env,
    session_config,
)


async def opencode_alone(binary: Path, workdir: Path) -> float:
    port = free_port()
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), **opencode_env(home)}
    (workdir / "ws").mkdir()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(binary), "serve", "--port", str(port), "--hostname", "127.0.0.1"],
        cwd=workdir / "ws", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            for _ in range(2400):
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/global/health", timeout=0.5)
                    if response.status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("OpenCode never became healthy")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def supervisor_to_ready(binary: Path, workdir: Path) -> float:
    git_server = GitHttpServer(workdir / "git").start()
    plane = await ControlPlane().start()
    runtime: RuntimeProcess | None = None
    try:
        git_server.create_repo("acme", "widget", {"README.md": "bench\n"})
        port = free_port()
        env = make_runtime_env(
            workdir,
            git_server=git_server,
            control_plane_url=plane.url,
            session=session_config(),
            env_server_cmd=f"{binary} serve --port {port} --hostname 127.0.0.1",
            env_server_port=port,
        )
        runtime = RuntimeProcess(env, workdir / "proc").start()
        await plane.wait_for("ready", timeout=120)
        return time.monotonic() - runtime.started_at
    finally:
        if runtime is not None:
            await runtime.cleanup()
        await plane.stop()
        git_server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    binary = find_opencode()
    if binary is None:
        sys.exit("OpenCode is not installed: run scripts/install-opencode.sh")
    baseline: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        for run in range(args.runs):
            baseline.append(await opencode_alone(binary, Path(tmp) / f"alone-{run}"))
            ours.append(await supervisor_to_ready(binary, Path(tmp) / f"ours-{run}"))
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"runs: {args.runs}   OpenCode: {version}")
    print(f"| {'measure':<38} | {'p50 s':>7} | {'min s':>7} | {'max s':>7} |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for name, values in (("OpenCode alone → healthy (baseline)", baseline), ("supervisor start → ready on WS", ours)):
        print(f"| {name:<38} | {statistics.median(values):7.2f} | {min(values):7.2f} | {max(values):7.2f} |")
    overhead = statistics.median(ours) - statistics.median(baseline)
    print(f"| {'runtime overhead (p50 difference)':<38} | {overhead:7.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
