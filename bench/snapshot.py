"""Snapshot and restore of a 512 MiB workspace through a real S3 server: format v2 vs v1 vs the reference.

In one run, against the same S3 server (moto's, or ``minio`` when on PATH) on 127.0.0.1:

* ours, once per format (``SANDBOX_SNAPSHOT_FORMAT=v2`` and ``v1``, each its own
  ``sandboxctl serve`` on the local provider, the same seeded workspace):
  ``POST /v1/sandboxes/{id}/snapshots`` (a first snapshot: for v2 the bucket's chunks
  and their index rows are deleted before it), ``POST /v1/snapshots/{id}/restore``, then a second snapshot
  after changing 1% of the files in one package (an agent's edit), and a third after
  changing 1% of the files spread over the whole tree (the worst case for chunking);
* reference (what the Open-Inspect services do): ``tar czf`` to a temp file, upload
  the file; download to a temp file, ``tar xzf``; every snapshot is a full one;
* the service's peak RSS growth during snapshots and restores (VmHWM, reset through
  ``/proc/<pid>/clear_refs`` before each);
* ``/healthz`` p99 while 4 snapshots run at once (v2 service).

The workspace: half random bytes (8 files), half text in 20,000 small files.
Usage: ``python bench/snapshot.py [--size 512] [--files 20000] [--runs 3]`` (``--size`` in MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402
from tests.fixtures.s3 import _build_server  # noqa: E402

GENERATE = r"""
import os, random, sys
total, files = int(sys.argv[1]), int(sys.argv[2])
half = total // 2
os.makedirs("/workspace/blobs", exist_ok=True)
noise = random.Random(11)  # seeded: both formats snapshot the same bytes
for i in range(8):
    with open(f"/workspace/blobs/random-{i}.bin", "wb") as fh:
        left = half // 8
        while left:
            n = min(left, 1 << 20)
            fh.write(noise.randbytes(n))
            left -= n
words = [w.strip() for w in open("/usr/share/dict/words")] if os.path.exists("/usr/share/dict/words") else None
rng = random.Random(7)
vocab = words or ["alpha", "beta", "gamma", "delta", "sandbox", "snapshot", "restore", "def", "return", "import"]
per_file = half // files
for i in range(files):
    d = f"/workspace/src/pkg{i // 500}"
    os.makedirs(d, exist_ok=True)
    line, out, size = [], [], 0
    while size < per_file:
        text = " ".join(rng.choice(vocab) for _ in range(12)) + "\n"
        out.append(text)
        size += len(text)
    with open(f"{d}/module_{i}.py", "w") as fh:
        fh.write("".join(out)[:per_file])
"""

# Appends a line to each listed file (indices into the generated modules).
EDIT = r"""
import sys
for i in map(int, sys.argv[2:]):
    with open(f"/workspace/src/pkg{i // 500}/module_{i}.py", "a") as fh:
        fh.write(f"# edit {sys.argv[1]}\n")
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reset_peak(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return rss_kib(pid, "VmRSS")


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reference_snapshot(workspace: Path, s3: Any, bucket: str, key: str, tmp: Path) -> float:
    started = time.perf_counter()
    archive = tmp / "ref.tar.gz"
    subprocess.run(["tar", "-C", str(workspace), "-czf", str(archive), "."], check=True)
    s3.upload_file(str(archive), bucket, key)
    archive.unlink()
    return time.perf_counter() - started


def reference_restore(s3: Any, bucket: str, key: str, tmp: Path) -> float:
    started = time.perf_counter()
    archive = tmp / "ref-down.tar.gz"
    s3.download_file(bucket, key, str(archive))
    target = tmp / "ref-restore"
    target.mkdir()
    subprocess.run(["tar", "-C", str(target), "-xzf", str(archive)], check=True)
    archive.unlink()
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


def delete_prefix(s3: Any, bucket: str, prefix: str) -> None:
    while True:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        keys = [{"Key": o["Key"]} for o in listed.get("Contents", [])]
        if not keys:
            return
        s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})


@dataclasses.dataclass
class Figures:
    """Per-run measurements of one side (seconds, bytes, MB)."""

    first: list[float] = dataclasses.field(default_factory=list)
    restore: list[float] = dataclasses.field(default_factory=list)
    second: list[float] = dataclasses.field(default_factory=list)
    spread: list[float] = dataclasses.field(default_factory=list)
    first_bytes: list[float] = dataclasses.field(default_factory=list)
    second_bytes: list[float] = dataclasses.field(default_factory=list)
    spread_bytes: list[float] = dataclasses.field(default_factory=list)
    rss: list[float] = dataclasses.field(default_factory=list)


class Service:
    """One ``sandboxctl serve`` with a given snapshot format, a sandbox holding the workspace."""

    def __init__(self, fmt: str, workdir: Path, s3_server: Any, bucket: str, secret: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
        env.update(
            SANDBOX_API_SECRET=secret,
            SANDBOX_PROVIDER="local",
            SANDBOX_DATA_DIR=str(workdir / f"data-{fmt}"),
            SANDBOX_LOG_LEVEL="warning",
            SANDBOX_EXEC_DEFAULT_TIMEOUT="600",
            SANDBOX_SNAPSHOT_FORMAT=fmt,
            S3_ENDPOINT=s3_server.endpoint,
            S3_BUCKET=bucket,
            S3_ACCESS_KEY=s3_server.access_key,
            S3_SECRET_KEY=s3_server.secret_key,
        )
        self.fmt = fmt
        self.workdir = workdir
        self.server = LiveServer(env, free_port(), workdir / f"server-{fmt}.log")

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def workspace(self, sandbox: dict[str, Any]) -> Path:
        root = self.workdir / f"data-{self.fmt}" / "local" / "sandboxes"
        return root / sandbox["provider_object_id"] / "workspace"

    def forget_chunks(self) -> None:
        """Empty the service's chunk index (its SQLite state store, WAL: safe while it runs)."""
        with contextlib.closing(sqlite3.connect(self.workdir / f"data-{self.fmt}" / "state.db", timeout=30)) as db:
            db.execute("DELETE FROM snapshot_chunks")
            db.commit()

    async def timed(self, call: Any) -> tuple[float, Any, float]:
        """(seconds, result, peak RSS growth in MB) of one API call."""
        await asyncio.to_thread(os.sync)  # each timed step starts with no writeback pending
        base = reset_peak(self.pid)
        started = time.perf_counter()
        result = await call
        elapsed = time.perf_counter() - started
        return elapsed, result, (rss_kib(self.pid, "VmHWM") - base) / 1024


async def measure(
    service: Service, client: SandboxClient, sandbox: dict[str, Any], run: int, files: int, s3: Any, bucket: str
) -> Figures:
    """One run of first snapshot, restore, second (clustered 1%) and third (spread 1%) snapshot."""
    figures = Figures()
    sid = sandbox["id"]
    if service.fmt == "v2":  # a first snapshot: an empty chunk store (bucket and index)
        await asyncio.to_thread(delete_prefix, s3, bucket, "chunks/")
        await asyncio.to_thread(service.forget_chunks)
    seconds, first, rss = await service.timed(client.request("POST", f"/v1/sandboxes/{sid}/snapshots", json={}))
    figures.first.append(seconds)
    figures.first_bytes.append(first["stored_bytes"])
    figures.rss.append(rss)
    seconds, restored, rss = await service.timed(
        client.request("POST", f"/v1/snapshots/{first['id']}/restore", json={})
    )
    figures.restore.append(seconds)
    figures.rss.append(rss)
    await client.delete(restored["id"])

    count = max(1, (files + 8) // 100)
    package = run % max(1, files // 500)
    clustered = [package * 500 + i for i in range(min(count, 500))]
    spread = [(i * 100 + 37 + run) % files for i in range(count)]
    for label, indices, times, sizes in (
        ("clustered", clustered, figures.second, figures.second_bytes),
        ("spread", spread, figures.spread, figures.spread_bytes),
    ):
        edited = await client.exec(sid, ["python3", "-c", EDIT, f"{label}-{run}", *map(str, indices)])
        assert edited["exit_code"] == 0, edited["stderr"]
        seconds, taken, rss = await service.timed(client.request("POST", f"/v1/sandboxes/{sid}/snapshots", json={}))
        times.append(seconds)
        sizes.append(taken["stored_bytes"])
        figures.rss.append(rss)
    return figures


def merge(into: Figures, more: Figures) -> None:
    for field in dataclasses.fields(Figures):
        getattr(into, field.name).extend(getattr(more, field.name))


async def healthz_under_load(
    service: Service, client: SandboxClient, source: dict[str, Any]
) -> tuple[list[float], float]:
    """/healthz latencies (ms) while 4 snapshots run at once, and their wall time."""
    health: list[float] = []
    done = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=service.server.url, timeout=10) as http:
            deadline = time.monotonic() + 900
            while not done.is_set() and time.monotonic() < deadline:
                started = time.perf_counter()
                await http.get("/healthz")
                health.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    others = [source] + [await client.create() for _ in range(3)]
    for other in others[1:]:
        await client.exec(other["id"], ["sh", "-c", "cp -r /usr/share/doc /workspace/doc 2>/dev/null; true"])
    started = time.perf_counter()
    await asyncio.gather(*(client.request("POST", f"/v1/sandboxes/{s['id']}/snapshots", json={}) for s in others))
    wall = time.perf_counter() - started
    done.set()
    await poller
    for other in others[1:]:
        await client.delete(other["id"])
    return health, wall


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", "--mib", dest="mib", type=int, default=512, help="workspace size, MiB")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sandbox-bench-snap-"))
    workdir.chmod(0o711)
    s3_server = _build_server(workdir)
    s3_server.start()
    bucket = "bench-" + secrets.token_hex(4)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    secret = secrets.token_hex(32)
    ours = {"v2": Figures(), "v1": Figures()}
    ref = Figures()
    health: list[float] = []
    wall = 0.0
    raw_size = 0
    try:
        for fmt in ("v2", "v1"):
            service = Service(fmt, workdir, s3_server, bucket, secret)
            service.server.start()
            try:
                async with SandboxClient(service.server.url, secret.encode(), timeout=1800) as client:
                    source = await client.create()
                    generate = ["python3", "-c", GENERATE, str(args.mib << 20), str(args.files)]
                    generated = await client.exec(source["id"], generate, timeout_seconds=1200)
                    assert generated["exit_code"] == 0, generated["stderr"]
                    workspace = service.workspace(source)
                    raw_size = sum(p.stat().st_size for p in workspace.rglob("*") if p.is_file())
                    for run in range(args.runs):
                        merge(ours[fmt], await measure(service, client, source, run, args.files, s3, bucket))
                        if fmt == "v1":  # the reference, on the same tree, interleaved with ours
                            key = f"ref/{run}"
                            for times in (ref.first, ref.second):
                                await asyncio.to_thread(os.sync)
                                times.append(
                                    await asyncio.to_thread(reference_snapshot, workspace, s3, bucket, key, workdir)
                                )
                            ref.first_bytes.append(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
                            await asyncio.to_thread(os.sync)
                            ref.restore.append(await asyncio.to_thread(reference_restore, s3, bucket, key, workdir))
                    if fmt == "v2":
                        health, wall = await healthz_under_load(service, client, source)
                    await client.delete(source["id"])
            finally:
                service.server.stop()
    finally:
        s3_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(ours["v2"], ours["v1"], ref, health, wall, raw_size, args, s3_server.kind)


def report(
    v2: Figures, v1: Figures, ref: Figures, health: list[float], wall: float, raw_size: int, args: Any, kind: str
) -> None:
    med = statistics.median
    mib = 1 << 20
    print(
        f"workspace: {raw_size / mib:.0f} MiB, {args.files} small files + 8 random blobs; S3: {kind}; {args.runs} runs"
    )
    print("| measure (median of runs)                          |      v2 |      v1 | tar czf+upload |")
    print("|---------------------------------------------------|---------|---------|----------------|")
    rows = (
        ("first snapshot (s)", v2.first, v1.first, ref.first),
        ("first snapshot, bytes stored (MiB)", [b / mib for b in v2.first_bytes],
         [b / mib for b in v1.first_bytes], [b / mib for b in ref.first_bytes]),
        ("restore (s)", v2.restore, v1.restore, ref.restore),
        ("2nd snapshot, 1% of files in one package (s)", v2.second, v1.second, ref.second),
        ("2nd snapshot, bytes stored (MiB)", [b / mib for b in v2.second_bytes],
         [b / mib for b in v1.second_bytes], [b / mib for b in ref.first_bytes]),
        ("3rd snapshot, 1% of files spread (s)", v2.spread, v1.spread, ref.second),
        ("3rd snapshot, bytes stored (MiB)", [b / mib for b in v2.spread_bytes],
         [b / mib for b in v1.spread_bytes], [b / mib for b in ref.first_bytes]),
    )  # fmt: skip
    for label, a, b, c in rows:
        print(f"| {label:<49} | {med(a):7.2f} | {med(b):7.2f} | {med(c):14.2f} |")
    print()
    for label, values in (
        ("v2 first    ", v2.first), ("v1 first    ", v1.first), ("ref snapshot", ref.first),
        ("v2 restore  ", v2.restore), ("v1 restore  ", v1.restore), ("ref restore ", ref.restore),
        ("v2 2nd      ", v2.second), ("v2 3rd      ", v2.spread),
    ):  # fmt: skip
        print(f"{label} per run (s): " + " ".join(f"{v:.2f}" for v in values))
    print()
    second_share = med(v2.second_bytes) / med(v2.first_bytes)
    spread_share = med(v2.spread_bytes) / med(v2.first_bytes)
    print(
        f"v2 2nd snapshot (clustered 1%): {second_share:.3f} of the first's bytes (target <= 0.05), "
        f"{med(v2.second) / med(v2.first):.2f}x its time (target <= 0.3)"
    )
    print(
        f"v2 3rd snapshot (spread 1%):    {spread_share:.3f} of the first's bytes, "
        f"{med(v2.spread) / med(v2.first):.2f}x its time"
    )
    print(
        f"v2 / v1: first snapshot {med(v2.first) / med(v1.first):.2f}x, restore "
        f"{med(v2.restore) / med(v1.restore):.2f}x (targets <= 1.1)"
    )
    print(
        f"v2 / reference: snapshot {med(v2.first) / med(ref.first):.2f}x, restore "
        f"{med(v2.restore) / med(ref.restore):.2f}x"
    )
    print(
        f"service peak RSS growth (max over steps): v2 {max(v2.rss):.0f} MB, v1 {max(v1.rss):.0f} MB (target <= 150 MB)"
    )
    if health:
        print(
            f"/healthz p99 during 4 concurrent v2 snapshots: {pct(health, 0.99):.1f} ms "
            f"(p50 {statistics.median(health):.1f} ms, {len(health)} probes, {wall:.1f} s; target <= 100 ms)"
        )  # fmt: skip


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
