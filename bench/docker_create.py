"""Docker provider benchmark: create → exec-ready, against raw ``docker run`` in the same run.

    .venv/bin/python bench/docker_create.py [--n 10] [--concurrency 20] [--image debian:bookworm-slim]

1. Latency: N sandboxes created one after another until a command runs in
   them (``Ours.create_ready``), against N ``docker run --rm --network none
   <image> true`` (create, start, run, remove) of the same image.
2. Concurrency: C create → exec → delete cycles at once; errors are counted,
   and containers left behind (by this run's label) must be 0.

Needs a running engine with the image (scripts/docker-setup.sh). What "ours"
means lives in one class, ``Ours``: point it at the HTTP API to measure the
whole service instead of the provider alone (it does: a live server on the docker provider).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.client import SandboxClient
from tests.fixtures.app import LiveServer, free_port


class Ours:
    """The system under test: the whole service (``sandboxctl serve``, docker provider) over HTTP."""

    def __init__(self, image: str, run_id: str) -> None:
        self.run_id = run_id
        self._count = 0
        self._workdir = Path(tempfile.mkdtemp(prefix="sandbox-bench-docker-"))
        self._secret = secrets.token_hex(32)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
        env.update(
            SANDBOX_API_SECRET=self._secret,
            SANDBOX_PROVIDER="docker",
            SANDBOX_BASE_IMAGE=image,
            SANDBOX_DOCKER_PULL="never",
            SANDBOX_DOCKER_NETWORK="none",
            SANDBOX_DATA_DIR=str(self._workdir / "data"),
            SANDBOX_LOG_LEVEL="warning",
        )
        self._server = LiveServer(env, free_port(), self._workdir / "server.log")
        self._client: SandboxClient | None = None

    async def aopen(self) -> None:
        self._server.start()
        self._client = SandboxClient(self._server.url, self._secret.encode())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._server.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    @property
    def client(self) -> SandboxClient:
        assert self._client is not None
        return self._client

    async def create_ready(self) -> str:
        """Create a sandbox and return once a command has run in it."""
        self._count += 1
        sandbox = await self.client.create(labels={"bench": self.run_id})
        result = await self.client.exec(sandbox["id"], ["true"])
        if result["exit_code"] != 0:
            raise RuntimeError(f"exec failed: {result}")
        return str(sandbox["id"])

    async def exec(self, ref: str) -> None:
        result = await self.client.exec(ref, ["sh", "-c", "echo ok"])
        if result["stdout"] != "ok\n":
            raise RuntimeError(f"exec failed: {result}")

    async def delete(self, ref: str) -> None:
        await self.client.delete(ref)

    async def leftovers(self) -> list[str]:
        """Our containers still on the engine (not just our records): ``docker ps -a`` by label."""
        proc = await asyncio.create_subprocess_exec(
            "docker", "ps", "-aq", "--filter", f"label=bench={self.run_id}", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return out.decode().split()


async def raw_docker_run(image: str) -> None:
    """The baseline: the docker CLI running a no-op container to completion."""
    proc = await asyncio.create_subprocess_exec(
        "docker", "run", "--rm", "--network", "none", image, "true",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"docker run failed: {err.decode().strip()}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def row(name: str, values: list[float]) -> str:
    return f"| {name:<38} | {len(values):>3} | {pct(values, 0.5) * 1000:>8.0f} | {pct(values, 0.9) * 1000:>8.0f} |"


async def latency(ours: Ours, image: str, n: int) -> tuple[list[float], list[float]]:
    mine, raw = [], []
    await raw_docker_run(image)  # warm both paths once, outside the figures
    await ours.delete(await ours.create_ready())
    for _ in range(n):
        started = time.perf_counter()
        ref = await ours.create_ready()
        mine.append(time.perf_counter() - started)
        await ours.delete(ref)
        started = time.perf_counter()
        await raw_docker_run(image)
        raw.append(time.perf_counter() - started)
    return mine, raw


async def concurrency(ours: Ours, count: int) -> tuple[list[float], list[str], float]:
    async def cycle() -> float:
        started = time.perf_counter()
        ref = await ours.create_ready()
        try:
            await ours.exec(ref)
        finally:
            await ours.delete(ref)
        return time.perf_counter() - started

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(cycle() for _ in range(count)), return_exceptions=True)
    wall = time.perf_counter() - started
    durations = [o for o in outcomes if isinstance(o, float)]
    errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    return durations, errors, wall


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--image", default="debian:bookworm-slim")
    args = parser.parse_args()
    if shutil.which("docker") is None:
        print("docker CLI not found (the baseline needs it); run scripts/docker-setup.sh")
        return 2
    ours = Ours(args.image, uuid.uuid4().hex[:8])
    await ours.aopen()
    try:
        mine, raw = await latency(ours, args.image, args.n)
        durations, errors, wall = await concurrency(ours, args.concurrency)
        left = await ours.leftovers()
        for ref in left:  # never leave the machine dirty, but report it
            await ours.delete(ref)
    finally:
        await ours.aclose()

    print(f"\nimage {args.image}; times in ms")
    print("| what                                   |   n |      p50 |      p90 |")
    print("|----------------------------------------|-----|----------|----------|")
    print(row("ours: create -> exec-ready", mine))
    print(row("raw: docker run --rm <image> true", raw))
    print(
        f"| {'ratio ours/raw (p50)':<38} |     | {statistics.median(mine) / statistics.median(raw):>8.2f} |          |"
    )
    print(row(f"{args.concurrency} concurrent create/exec/delete", durations or [0.0]))
    print(f"\nconcurrent: wall {wall:.2f}s, errors {len(errors)}, containers left behind {len(left)} (must be 0)")
    for error in errors[:5]:
        print(f"  error: {error}")
    return 1 if errors or left else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
