"""Snapshot and restore of a 512 MiB workspace through a real S3 server, vs the reference approach.

In one run, against the same S3 server (moto's, or ``minio`` when on PATH) on 127.0.0.1:

* ours: ``POST /v1/sandboxes/{id}/snapshots`` and ``POST /v1/snapshots/{id}/restore``
  on a real ``sandboxctl serve`` (local provider);
* reference (what the Open-Inspect services do): ``tar czf`` to a temp file, upload
  the file; download to a temp file, ``tar xzf``;
* the service's peak RSS growth during our snapshot and restore (VmHWM, reset
  through ``/proc/<pid>/clear_refs`` before each);
* ``/healthz`` p99 while 4 snapshots run at once.

The workspace: half random bytes (8 files), half text in 20,000 small files.
Usage: ``python bench/snapshot.py [--mib 512] [--files 20000] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
for i in range(8):
    with open(f"/workspace/blobs/random-{i}.bin", "wb") as fh:
        left = half // 8
        while left:
            n = min(left, 1 << 20)
            fh.write(os.urandom(n))
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


def reference_snapshot(workspace: Path, s3: object, bucket: str, key: str, tmp: Path) -> float:
    started = time.perf_counter()
    archive = tmp / "ref.tar.gz"
    subprocess.run(["tar", "-C", str(workspace), "-czf", str(archive), "."], check=True)
    s3.upload_file(str(archive), bucket, key)  # type: ignore[attr-defined]
    archive.unlink()
    return time.perf_counter() - started


def reference_restore(s3: object, bucket: str, key: str, tmp: Path) -> float:
    started = time.perf_counter()
    archive = tmp / "ref-down.tar.gz"
    s3.download_file(bucket, key, str(archive))  # type: ignore[attr-defined]
    target = tmp / "ref-restore"
    target.mkdir()
    subprocess.run(["tar", "-C", str(target), "-xzf", str(archive)], check=True)
    archive.unlink()
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
    env.update(
        SANDBOX_API_SECRET=secret,
        SANDBOX_PROVIDER="local",
        SANDBOX_DATA_DIR=str(workdir / "data"),
        SANDBOX_LOG_LEVEL="warning",
        SANDBOX_EXEC_DEFAULT_TIMEOUT="600",
        S3_ENDPOINT=s3_server.endpoint,
        S3_BUCKET=bucket,
        S3_ACCESS_KEY=s3_server.access_key,
        S3_SECRET_KEY=s3_server.secret_key,
    )
    server = LiveServer(env, free_port(), workdir / "server.log")
    server.start()
    assert server.process is not None
    pid = server.process.pid
    ours_snap, ours_restore, ref_snap, ref_restore, rss_growth = [], [], [], [], []
    health: list[float] = []
    try:
        async with SandboxClient(server.url, secret.encode(), timeout=1800) as client:
            source = await client.create()
            generated = await client.exec(
                source["id"], ["python3", "-c", GENERATE, str(args.mib << 20), str(args.files)], timeout_seconds=1200
            )
            assert generated["exit_code"] == 0, generated["stderr"]
            workspace = workdir / "data" / "local" / "sandboxes" / source["provider_object_id"] / "workspace"
            raw_size = sum(p.stat().st_size for p in workspace.rglob("*") if p.is_file())
            for run in range(args.runs):
                # Each timed step starts from the same clean page cache writeback state:
                # otherwise whichever side runs right after a big write pays for its flush.
                await asyncio.to_thread(os.sync)
                base = reset_peak(pid)
                started = time.perf_counter()
                snapshot = await client.request("POST", f"/v1/sandboxes/{source['id']}/snapshots", json={})
                ours_snap.append(time.perf_counter() - started)
                peak_snap = rss_kib(pid, "VmHWM") - base

                await asyncio.to_thread(os.sync)
                base = reset_peak(pid)
                started = time.perf_counter()
                restored = await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={})
                ours_restore.append(time.perf_counter() - started)
                peak_restore = rss_kib(pid, "VmHWM") - base
                rss_growth.append(max(peak_snap, peak_restore) / 1024)
                await client.delete(restored["id"])

                key = f"ref/{run}"
                await asyncio.to_thread(os.sync)
                ref_snap.append(await asyncio.to_thread(reference_snapshot, workspace, s3, bucket, key, workdir))
                await asyncio.to_thread(os.sync)
                ref_restore.append(await asyncio.to_thread(reference_restore, s3, bucket, key, workdir))

            # /healthz while 4 snapshots run at once.
            done = asyncio.Event()

            async def poll() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
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
            await asyncio.gather(
                *(client.request("POST", f"/v1/sandboxes/{s['id']}/snapshots", json={}) for s in others)
            )
            concurrent_wall = time.perf_counter() - started
            done.set()
            await poller
            for other in others:
                await client.delete(other["id"])
    finally:
        server.stop()
        s3_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    snap_ratio = statistics.median(ours_snap) / statistics.median(ref_snap)
    restore_ratio = statistics.median(ours_restore) / statistics.median(ref_restore)
    print(f"workspace: {raw_size / (1 << 20):.0f} MiB, {args.files} small files + 8 random blobs; S3: {s3_server.kind}")
    print("| measure (s, median of runs)                     |   ours | reference | ratio |")
    print("|-------------------------------------------------|--------|-----------|-------|")
    print(
        f"| snapshot (ours: API; ref: tar czf + upload)      | {statistics.median(ours_snap):6.2f} |"
        f" {statistics.median(ref_snap):9.2f} | {snap_ratio:5.2f} |"
    )
    print(
        f"| restore (ours: API, new sandbox; ref: get + xzf) | {statistics.median(ours_restore):6.2f} |"
        f" {statistics.median(ref_restore):9.2f} | {restore_ratio:5.2f} |"
    )
    print()
    for label, values in (
        ("snapshot ours", ours_snap), ("snapshot ref ", ref_snap),
        ("restore ours ", ours_restore), ("restore ref  ", ref_restore),
    ):  # fmt: skip
        print(f"{label} per run (s): " + " ".join(f"{v:.2f}" for v in values))
    print(f"snapshot ≤ 0.6x reference: {snap_ratio:.2f}; restore ≤ 0.6x reference: {restore_ratio:.2f}")
    print(f"service peak RSS growth (max over runs): {max(rss_growth):.0f} MB (target ≤ 150 MB)")
    print(
        f"/healthz p99 during 4 concurrent snapshots: {pct(health, 0.99):.1f} ms "
        f"(p50 {statistics.median(health):.1f} ms, {len(health)} probes, {concurrent_wall:.1f} s; target ≤ 100 ms)"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
