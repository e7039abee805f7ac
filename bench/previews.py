"""Preview proxy vs the same dev server reached directly, in the same run.

Runs a real ``sandboxctl serve`` (local provider), a host-network sandbox with
``tests/fixtures/preview_upstream.py`` started in it as a background process,
and a preview of its port. Then, alternating direct and proxied rounds so both
see the same machine load:

* latency: sequential ``GET /`` on one keep-alive connection, p50/p99;
* throughput: ``--concurrency`` clients issuing ``--requests`` small GETs, requests/s;
* bulk: one ``--mib`` MiB download, MiB/s.

Medians over ``--rounds`` rounds; every round is bounded in count, the whole run
by ``--deadline`` seconds. Usage:
``python bench/previews.py [--rounds 3] [--requests 2000] [--concurrency 8] [--mib 200]``.
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

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from bench.create_exec import pct  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402
from tests.fixtures.preview_upstream import __file__ as UPSTREAM_SCRIPT  # noqa: E402


async def sequential(base: str, count: int) -> list[float]:
    """Milliseconds of ``count`` GETs one after the other on one connection."""
    timings: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        await http.get(f"{base}/")  # the connection, warm
        for _ in range(count):
            started = time.perf_counter()
            answer = await http.get(f"{base}/")
            timings.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
    return timings


async def concurrent(base: str, count: int, clients: int) -> float:
    """Requests per second of ``count`` GETs spread over ``clients`` concurrent keep-alive clients."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(http.get(f"{base}/") for _ in range(clients)))

        async def worker(share: int) -> None:
            for _ in range(share):
                assert (await http.get(f"{base}/")).status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker(count // clients) for _ in range(clients)))
        return (count // clients * clients) / (time.perf_counter() - started)


async def bulk(base: str, mib: int) -> float:
    """MiB/s of one ``mib`` MiB download."""
    size = 0
    async with httpx.AsyncClient(timeout=120) as http:
        started = time.perf_counter()
        async with http.stream("GET", f"{base}/download?size={mib << 20}") as answer:
            async for chunk in answer.aiter_raw():
                size += len(chunk)
        seconds = time.perf_counter() - started
    assert size == mib << 20
    return mib / seconds


async def wait_served(base: str) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{base}/")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{base} never answered")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=600.0)
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
    server = LiveServer(env, free_port(), workdir / "server.log")
    server.start()
    results: dict[str, dict[str, list[float]]] = {
        "direct": {"p50": [], "p99": [], "rps": [], "mibs": []},
        "proxy": {"p50": [], "p99": [], "rps": [], "mibs": []},
    }
    ended = time.monotonic() + args.deadline
    try:
        async with SandboxClient(server.url, secret.encode()) as client:
            sandbox = await client.create(network="host")
            port = free_port()
            await client.upload(sandbox["id"], "/workspace/upstream.py", Path(UPSTREAM_SCRIPT))
            await client.start_process(sandbox["id"], ["python3", "/workspace/upstream.py", str(port)])
            preview = await client.create_preview(sandbox["id"], port)
            bases = {"direct": f"http://127.0.0.1:{port}", "proxy": str(preview["url"]).rstrip("/")}
            await wait_served(bases["direct"])
            await wait_served(bases["proxy"])
            for _ in range(args.rounds):
                for name, base in bases.items():
                    if time.monotonic() > ended:
                        break
                    timings = await sequential(base, args.sequential)
                    results[name]["p50"].append(statistics.median(timings))
                    results[name]["p99"].append(pct(timings, 0.99))
                    results[name]["rps"].append(await concurrent(base, args.requests, args.concurrency))
                    results[name]["mibs"].append(await bulk(base, args.mib))
            await client.delete(sandbox["id"])
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(results[name][key])

    print(f"rounds: {len(results['proxy']['p50'])} (medians below); load on the machine is whatever else runs")
    print(f"| {'path':<34} | p50 (ms) | p99 (ms) | req/s (x{args.concurrency}) | {args.mib} MiB (MiB/s) |")
    print(f"|{'-' * 36}|----------|----------|--------------|----------------|")
    for name, label in (("direct", "direct to the sandbox port"), ("proxy", "through the preview proxy (/p/…)")):
        print(
            f"| {label:<34} | {med(name, 'p50'):8.2f} | {med(name, 'p99'):8.2f} "
            f"| {med(name, 'rps'):12.0f} | {med(name, 'mibs'):14.0f} |"
        )
    print()
    added = med("proxy", "p50") - med("direct", "p50")
    print(f"p50 added by the proxy: {added:+.2f} ms (target ≤ +2 ms)")
    print(f"throughput ratio (req/s): {med('proxy', 'rps') / med('direct', 'rps'):.2f} (target ≥ 0.8)")
    print(f"bulk ratio (MiB/s):       {med('proxy', 'mibs') / med('direct', 'mibs'):.2f} (target ≥ 0.8)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
