"""Create→exec throughput and latency with one and with two replicas on one PostgreSQL.

Starts a throwaway PostgreSQL cluster, then for 1 and for 2 replicas (real
``sandboxctl serve`` processes, local provider, one shared data dir, a fresh
database each) runs the same bounded workload: ``--cycles`` create → exec
``true`` → delete cycles, ``--concurrency`` at a time, spread round-robin over
the replicas. Prints cycles/s and the cycle latency p50/p99 per setup; the
single replica is the baseline of the same run. On a 2-core machine two
replicas share the same cores and sandboxes, so the figure to watch is that
the second replica costs nothing (no worse than -10 %), not that it doubles.

Usage: ``python bench/replicas.py [--cycles 80] [--concurrency 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402
from tests.fixtures.postgres import postgres_cluster  # noqa: E402
from tests.support import private_uid_range  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def new_database(cluster_url: str, name: str) -> str:
    rest = cluster_url.split("@", 1)[1]
    host, _, port = rest.partition("/")[0].partition(":")
    createdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/createdb"))[-1]
    subprocess.run([str(createdb), "-h", host, "-p", port, "-U", "sandbox", name], check=True, capture_output=True)
    return cluster_url.rsplit("/", 1)[0] + "/" + name


def start_replicas(count: int, state_url: str, data_dir: Path, secret: str, logs: Path) -> list[LiveServer]:
    servers = []
    uid = private_uid_range()
    for index in range(count):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
        env.update(
            SANDBOX_API_SECRET=secret,
            SANDBOX_PROVIDER="local",
            SANDBOX_DATA_DIR=str(data_dir),
            SANDBOX_STATE_URL=state_url,
            SANDBOX_REPLICA_ID=f"bench-{index}",
            SANDBOX_LOG_LEVEL="warning",
            # Each replica its own uid range: they share the data dir, not the uids.
            SANDBOX_LOCAL_UID_BASE=str(uid["uid_base"] + index * 100_000),
            SANDBOX_LOCAL_UID_COUNT="1000",
        )
        server = LiveServer(env, free_port(), logs / f"replica-{count}-{index}.log")
        server.start(60)
        servers.append(server)
    return servers


async def workload(servers: list[LiveServer], secret: str, cycles: int, concurrency: int) -> tuple[float, list[float]]:
    clients = [SandboxClient(s.url, secret.encode(), timeout=120) for s in servers]
    turn = itertools.count()
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def cycle() -> None:
        async with gate:
            client = clients[next(turn) % len(clients)]
            started = time.perf_counter()
            sandbox = await client.create()
            result = await client.exec(sandbox["id"], ["true"])
            assert result["exit_code"] == 0
            await client.delete(sandbox["id"])
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(cycle() for _ in range(cycles))), timeout=900)
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    return cycles / wall, latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    secret = secrets.token_hex(32)
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    os.chmod(work, 0o755)  # sandbox uids traverse to their dirs
    results: dict[int, tuple[float, list[float]]] = {}
    try:
        with postgres_cluster() as cluster:
            for count in (1, 2):
                url = new_database(cluster, f"bench_{count}")
                data_dir = work / f"data-{count}"
                servers = start_replicas(count, url, data_dir, secret, work)
                try:
                    await workload(servers, secret, min(8, args.cycles), args.concurrency)  # warm-up
                    results[count] = await workload(servers, secret, args.cycles, args.concurrency)
                finally:
                    for server in servers:
                        server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[1][0]
    print(f"\ncreate→exec→delete cycles, {args.cycles} per setup, {args.concurrency} at a time, one PostgreSQL\n")
    print("| replicas | cycles/s | vs 1 replica | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for count, (rate, latencies) in results.items():
        print(
            f"| {count} | {rate:8.2f} | {rate / base:5.2f}x | {statistics.median(latencies):7.0f} "
            f"| {pct(latencies, 0.99):7.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
