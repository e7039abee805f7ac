"""Streamed exec through the API vs the same command on a raw bubblewrap pipe.

Runs a real ``sandboxctl serve`` (local provider) and measures, in the same run:

* line latency: a command prints 200 lines 20 ms apart, each carrying the
  wall-clock nanoseconds it was written at (``date +%s%N``, same host clock);
  the time until each line reaches the client, p50/p99, through the API vs raw bwrap
  (the provider's own arguments for that sandbox, its stdout pipe read
  directly);
* throughput of 200 MiB of text (``yes``) through the API, as the client reads it
  (length-prefixed frames) and as server-sent events (``?encoding=escaped``), vs
  the raw pipe;
* ``/healthz`` latency (polled from another process) while 8 clients each
  stream 50 MiB at once.

Usage: ``python bench/streams.py [--lines 200] [--mib 200] [--rounds 3] [--streams 8] [--stream-mib 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.allocator import tune_allocator  # noqa: E402
from app.client import Exit, Output, SandboxClient  # noqa: E402
from app.providers.local import LocalProvider  # noqa: E402
from app.providers.local.io import OUTPUT_READ_BYTES, grow_output_pipes  # noqa: E402
from app.providers.local.limits import AppliedLimits  # noqa: E402
from app.providers.registry import provider_context  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.create_exec import POLLER, pct  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402


def lines_script(count: int) -> str:
    return f"i=0; while [ $i -lt {count} ]; do date +%s%N; sleep 0.02; i=$((i + 1)); done"


def bulk_script(mib: int) -> str:
    return f"yes 'the quick brown fox jumps over the lazy dog 0123456789' | head -c {mib << 20}"


def usage(server_pid: int) -> tuple[float, int, float, int]:
    """(service CPU s, service minor faults, this client's CPU s, its minor faults) so far."""
    fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[7]), own.ru_utime + own.ru_stime, own.ru_minflt


def latencies(stamps: list[tuple[bytes, int]]) -> list[float]:
    """(line, arrival ns) pairs to milliseconds from write to arrival."""
    return [(arrived - int(line)) / 1e6 for line, arrived in stamps]


class Lines:
    """Splits a byte stream into lines, stamping each with its arrival time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.stamped: list[tuple[bytes, int]] = []

    def feed(self, data: bytes) -> None:
        now = time.time_ns()
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        self.stamped += [(line, now) for line in complete if line.strip()]


async def raw_run(data_dir: Path, ref: str, script: str, sink: Lines | None) -> tuple[int, float]:
    """``script`` under bwrap with the provider's arguments for ``ref``: (bytes read, seconds)."""
    settings = Settings.load(data_dir=data_dir, api_secrets=[])
    provider = LocalProvider(settings.local, provider_context(settings))
    await provider.aopen()
    meta = provider._store.load_meta(ref)  # the bench may reach inside: same args, no service
    try:
        with provider._sandboxed(meta) as fd:
            argv = provider._spawn_argv(meta, AppliedLimits(), fd, ["sh", "-c", script])
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(fd,), stdout=asyncio.subprocess.PIPE, limit=OUTPUT_READ_BYTES
            )
            # The pipe and reads the provider itself uses: with the 64 KiB default, every 64 KiB
            # was a switch between writer and reader, and the baseline swung 140-700 MiB/s.
            grow_output_pipes(proc)
            assert proc.stdout is not None
            total = 0
            while chunk := await proc.stdout.read(OUTPUT_READ_BYTES):
                total += len(chunk)
                if sink is not None:
                    sink.feed(chunk)
            await proc.wait()
            return total, time.perf_counter() - started
    finally:
        await provider.aclose()


async def api_run(
    client: SandboxClient, sandbox_id: str, script: str, sink: Lines | None, *, framed: bool = True
) -> tuple[int, float]:
    """``script`` as a streamed exec: (bytes received, seconds)."""
    started = time.perf_counter()
    total = 0
    async for event in client.exec_stream(sandbox_id, ["sh", "-c", script], framed=framed, timeout_seconds=600):
        if isinstance(event, Output):
            total += len(event.data)
            if sink is not None:
                sink.feed(event.data)
        else:
            assert isinstance(event, Exit) and event.exit_code == 0, event
    return total, time.perf_counter() - started


async def concurrent_streams(
    client: SandboxClient, sandbox_id: str, url: str, streams: int, mib: int, stop: Path
) -> list[float]:
    poller = await asyncio.create_subprocess_exec(
        sys.executable, "-c", POLLER, url + "/healthz", str(stop), stdout=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(0.3)
    results = await asyncio.gather(*(api_run(client, sandbox_id, bulk_script(mib), None) for _ in range(streams)))
    stop.touch()
    out, _ = await poller.communicate()
    assert all(total == mib << 20 for total, _ in results), results
    return list(json.loads(out))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs of each side")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-mib", type=int, default=50)
    args = parser.parse_args()
    # The client side runs as `sandboxctl exec` does (the service sets the same itself).
    tuned = tune_allocator(os.environ)

    workdir = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    workdir.chmod(0o711)
    secret = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
    env.update(
        SANDBOX_API_SECRET=secret,
        SANDBOX_PROVIDER="local",
        SANDBOX_DATA_DIR=str(workdir / "data"),
        SANDBOX_LOG_LEVEL="warning",
        # The whole stream reaches the client (the cap drops what is past it).
        SANDBOX_EXEC_MAX_OUTPUT_BYTES=str(max(args.mib, args.stream_mib) + 1 << 20),
    )
    server = LiveServer(env, free_port(), workdir / "server.log")
    server.start()
    try:
        async with SandboxClient(server.url, secret.encode()) as client:
            sandbox = await client.create(network="none")
            await client.exec(sandbox["id"], ["true"])
            ref = sandbox["provider_object_id"]

            api_lines, raw_lines = Lines(), Lines()
            await api_run(client, sandbox["id"], lines_script(args.lines), api_lines)
            await raw_run(workdir / "data", ref, lines_script(args.lines), raw_lines)

            rates: dict[str, list[float]] = {"raw": [], "frames": [], "sse": []}
            #: Per MiB of each API side: service CPU ms, service faults, client CPU ms, client faults.
            costs: dict[str, list[tuple[float, ...]]] = {"frames": [], "sse": []}
            assert server.process is not None
            for _ in range(args.rounds):  # alternated, so every side sees the same machine
                runs = {"raw": await raw_run(workdir / "data", ref, bulk_script(args.mib), None)}
                for side in costs:
                    before = usage(server.process.pid)
                    script = bulk_script(args.mib)
                    runs[side] = await api_run(client, sandbox["id"], script, None, framed=side == "frames")
                    spent = [b - a for a, b in zip(before, usage(server.process.pid), strict=True)]
                    costs[side].append(
                        (spent[0] * 1e3 / args.mib, spent[1] / args.mib, spent[2] * 1e3 / args.mib, spent[3] / args.mib)
                    )
                for side, (received, seconds) in runs.items():
                    assert received == args.mib << 20, (side, received)
                    rates[side].append(received / seconds / (1 << 20))

            health = await concurrent_streams(
                client, sandbox["id"], server.url, args.streams, args.stream_mib, workdir / "stop"
            )
            await client.delete(sandbox["id"])
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    api_ms, raw_ms = latencies(api_lines.stamped), latencies(raw_lines.stamped)
    assert len(api_ms) == len(raw_ms) == args.lines, (len(api_ms), len(raw_ms))
    rate = {side: statistics.median(values) for side, values in rates.items()}

    def line(name: str, values: list[float]) -> str:
        return f"| {name:<44} | {statistics.median(values):8.2f} | {pct(values, 0.99):8.2f} |"

    print(f"| {'measure (ms)':<44} |      p50 |      p99 |")
    print(f"|{'-' * 46}|----------|----------|")
    print(line("line latency, raw bwrap pipe", raw_ms))
    print(line("line latency, streamed exec (frames)", api_ms))
    print(line(f"/healthz during {args.streams} x {args.stream_mib} MiB streams", health))
    print()
    print(
        f"line latency p50 over raw: {statistics.median(api_ms) - statistics.median(raw_ms):+.2f} ms (target ≤ +20 ms)"
    )
    print(f"{args.mib} MiB throughput, median of {args.rounds} (MiB/s): raw pipe {rate['raw']:.0f}")
    print(
        "  each round: "
        + "; ".join(f"{side} " + " ".join(f"{v:.0f}" for v in values) for side, values in rates.items())
    )
    for side, name in (("frames", "length-prefixed frames (the client's default)"), ("sse", "server-sent events")):
        print(f"  {name}: {rate[side]:.0f}, ratio {rate[side] / rate['raw']:.2f} (target ≥ 0.5)")
    print("per MiB, median: service CPU ms, service minor faults, client CPU ms, client minor faults")
    for side, values in costs.items():
        print(f"  {side}: " + ", ".join(f"{statistics.median(column):.2f}" for column in zip(*values, strict=True)))
    print(f"allocator thresholds set in the client process: {tuned} (as sandboxctl does; any MALLOC_* turns them off)")
    print(f"/healthz p99 during the streams: {pct(health, 0.99):.1f} ms over {len(health)} probes (target ≤ 100 ms)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
