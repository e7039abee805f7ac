"""Create→exec latency and exec round-trip through the API vs raw bubblewrap.

Runs a real ``sandboxctl serve`` (local provider, asyncio debug on with a
50 ms slow-callback threshold) and measures, in the same run:

* create→first exec (HTTP create + HTTP ``true``) vs a raw ``bwrap … true``
  with exactly the arguments the provider uses for that sandbox;
* exec round-trip (HTTP ``true``) vs the same raw ``bwrap … true``;
* 50 concurrent create/exec/delete cycles: errors, wall time;
* ``/healthz`` p99 while those cycles run;
* event-loop stalls: asyncio's "Executing … took" warnings in the server log.

Usage: ``python bench/create_exec.py [--runs 30] [--concurrency 50]``.
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
from app.providers.local import LocalProvider  # noqa: E402
from app.providers.local.limits import AppliedLimits  # noqa: E402
from app.providers.registry import provider_context  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, values: list[float]) -> str:
    return f"| {name:<38} | {statistics.median(values):8.1f} | {pct(values, 0.9):8.1f} | {pct(values, 0.99):8.1f} |"


async def raw_bwrap_runs(data_dir: Path, ref: str, runs: int) -> list[float]:
    """``bwrap … true`` with the provider's own arguments for sandbox ``ref``."""
    settings = Settings.load(data_dir=data_dir, api_secrets=[])
    provider = LocalProvider(settings.local, provider_context(settings))
    await provider.aopen()
    meta = provider._store.load_meta(ref)  # the bench may reach inside: same args, no service
    times = []
    for _ in range(runs):
        with provider._sandboxed(meta) as fd:
            argv = provider._spawn_argv(meta, AppliedLimits(), fd, ["true"])
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(fd,))
            assert await proc.wait() == 0
            times.append((time.perf_counter() - started) * 1000)
    await provider.aclose()
    return times


POLLER = r"""
import json, sys, time, httpx, pathlib
url, stop = sys.argv[1], pathlib.Path(sys.argv[2])
out = []
with httpx.Client(timeout=10) as http:
    deadline = time.monotonic() + 300
    while not stop.exists() and time.monotonic() < deadline:
        t = time.perf_counter()
        http.get(url)
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.02)
print(json.dumps(out))
"""


async def concurrent_phase(
    server: LiveServer, secret: str, concurrency: int
) -> tuple[list[str], list[dict[str, object]], float, list[float]]:
    """``concurrency`` create/exec/delete cycles at once, /healthz polled from another process."""
    import json

    server.start()
    stop_file = server.log_path.with_suffix(".stop")
    try:
        async with SandboxClient(server.url, secret.encode()) as client:
            await client.exec((await client.create(labels={"bench": "warm"}))["id"], ["true"])
            errors: list[str] = []

            async def cycle(i: int) -> None:
                try:
                    sandbox = await client.create(labels={"bench": "cycle"})
                    result = await client.exec(sandbox["id"], ["sh", "-c", f"echo {i}"])
                    if result["stdout"] != f"{i}\n":
                        errors.append(f"cycle {i}: wrong output {result['stdout']!r}")
                    await client.delete(sandbox["id"])
                except Exception as exc:
                    errors.append(f"cycle {i}: {exc}")

            poller = await asyncio.create_subprocess_exec(
                sys.executable, "-c", POLLER, server.url + "/healthz", str(stop_file), stdout=asyncio.subprocess.PIPE
            )
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(cycle(i) for i in range(concurrency))), 300)
            wall = time.perf_counter() - started
            stop_file.touch()
            out, _ = await poller.communicate()
            leftovers = await client.list_sandboxes({"bench": "cycle"})
            for sandbox in await client.list_sandboxes({"bench": "warm"}):
                await client.delete(sandbox["id"])
    finally:
        server.stop()
    return errors, leftovers, wall, json.loads(out)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    workdir.chmod(0o711)
    secret = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
    env.update(
        SANDBOX_API_SECRET=secret,
        SANDBOX_PROVIDER="local",
        SANDBOX_DATA_DIR=str(workdir / "data"),
        SANDBOX_LOG_LEVEL="warning",
    )
    # Latencies on a normal server; asyncio debug mode (which slows every
    # callback down) only for the concurrent phase that checks for stalls.
    server = LiveServer(env, free_port(), workdir / "server.log")
    server.start()
    try:
        async with SandboxClient(server.url, secret.encode()) as client:
            # Warm up imports and the first sandbox directory.
            warm = await client.create()
            await client.exec(warm["id"], ["true"])

            create_exec: list[float] = []
            for _ in range(args.runs):
                started = time.perf_counter()
                sandbox = await client.create()
                await client.exec(sandbox["id"], ["true"])
                create_exec.append((time.perf_counter() - started) * 1000)
                await client.delete(sandbox["id"])

            exec_rt: list[float] = []
            for _ in range(args.runs):
                started = time.perf_counter()
                result = await client.exec(warm["id"], ["true"])
                exec_rt.append((time.perf_counter() - started) * 1000)
                assert result["exit_code"] == 0
            raw = await raw_bwrap_runs(workdir / "data", warm["provider_object_id"], args.runs)
            await client.delete(warm["id"])
    finally:
        server.stop()

    normal = await concurrent_phase(LiveServer(env, free_port(), workdir / "server-2.log"), secret, args.concurrency)
    debug_env = {**env, "SANDBOX_LOOP_DEBUG_SLOW_MS": "50"}
    debug = await concurrent_phase(LiveServer(debug_env, free_port(), workdir / "server-debug.log"), secret, 20)
    stalls = [
        line
        for line in (workdir / "server-debug.log").read_text().splitlines()
        if "Executing" in line and "took" in line and "LifespanOn" not in line
    ]
    shutil.rmtree(workdir, ignore_errors=True)
    errors, leftovers, cycles_wall, health = normal

    print("| measure (ms)                           |      p50 |      p90 |      p99 |")
    print("|----------------------------------------|----------|----------|----------|")
    print(row("raw bwrap … true (same args)", raw))
    print(row("ours: create → first exec (HTTP)", create_exec))
    print(row("ours: exec round-trip (HTTP)", exec_rt))
    print(row(f"/healthz during {args.concurrency} concurrent cycles", health))
    print()
    p50_raw = statistics.median(raw)
    print(f"create→exec-ready p50 over raw: {statistics.median(create_exec) - p50_raw:+.1f} ms (target ≤ +100 ms)")
    print(f"exec round-trip p50 over raw:   {statistics.median(exec_rt) - p50_raw:+.1f} ms (target ≤ +30 ms)")
    print(
        f"{args.concurrency} concurrent create/exec/delete cycles: {len(errors)} errors, "
        f"{len(leftovers)} left behind, {cycles_wall:.1f} s wall"
    )
    print(f"/healthz p99 during the cycles: {pct(health, 0.99):.1f} ms over {len(health)} probes (target ≤ 50 ms)")
    print(
        f"event-loop callbacks slower than 50 ms (asyncio debug on, {len(debug[3])} probes, "
        f"20 concurrent cycles, {len(debug[0])} errors; startup excluded): {len(stalls)}"
    )
    for line in stalls[:5]:
        print("  ", line[:600])
    for error in errors[:5]:
        print("  error:", error)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
