"""What a SIGKILL of the service leaves behind, seen by a client that retries with its Idempotency-Key."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.auth import make_token
from tests.fixtures.app import LiveServer


async def test_a_keyed_create_survives_a_restart_and_a_kill_mid_create(
    live_server_factory: Callable[..., LiveServer],
) -> None:
    secret = secrets.token_hex(32)
    servers: list[LiveServer] = []

    async def start() -> LiveServer:
        server = live_server_factory(secret, SANDBOX_LEASE_TTL="2")
        await asyncio.to_thread(server.start, 60.0)
        servers.append(server)
        return server

    def headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(secret.encode())}", "Idempotency-Key": key}

    first = await start()
    async with httpx.AsyncClient(base_url=first.url, timeout=60) as client:
        answered = await client.post("/v1/sandboxes", json={"labels": {"job": "a"}}, headers=headers("job-a"))
        assert answered.status_code == 201
        # Killed mid-create: the answer never arrives.
        in_flight = asyncio.create_task(
            client.post("/v1/sandboxes", json={"labels": {"job": "b"}}, headers=headers("job-b"))
        )
        await asyncio.sleep(0.15)
        first.kill()
        with contextlib.suppress(httpx.HTTPError):
            await in_flight

    second = await start()
    async with httpx.AsyncClient(base_url=second.url, timeout=60) as client:
        replayed = await client.post("/v1/sandboxes", json={"labels": {"job": "a"}}, headers=headers("job-a"))
        assert replayed.json() == answered.json() and replayed.headers["idempotent-replayed"] == "true"
        retry = None
        for _ in range(60):  # 409 while the dead replica still counts as alive (one lease TTL)
            retry = await client.post("/v1/sandboxes", json={"labels": {"job": "b"}}, headers=headers("job-b"))
            if retry.status_code != 409:
                break
            assert retry.json()["code"] == "idempotency_in_progress"
            await asyncio.sleep(0.25)
        assert retry is not None and retry.status_code == 201, retry.text if retry else None
        listed = (await client.get("/v1/sandboxes", params={"label": "job=b"}, headers=headers("x"))).json()
        live = [s for s in listed["sandboxes"] if s["status"] != "deleted"]
        assert [s["id"] for s in live] == [retry.json()["id"]]  # one sandbox for the key, whatever the kill hit
        for sandbox in (answered.json(), retry.json()):
            await client.delete(f"/v1/sandboxes/{sandbox['id']}", headers=headers("cleanup"))


def _under_way(s3: Any, bucket: str, fmt: str) -> bool:
    """v1: its multipart upload exists; v2: chunks are arriving."""
    if fmt == "v1":
        return bool(s3.list_multipart_uploads(Bucket=bucket).get("Uploads"))
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix="chunks/").get("KeyCount"))


@pytest.mark.s3
@pytest.mark.parametrize("fmt", ["v1", "v2"])
async def test_a_snapshot_killed_mid_upload_is_failed_and_its_upload_aborted_at_the_next_start(
    live_server_factory: Callable[..., LiveServer], s3_server: Any, s3_bucket: str, fmt: str
) -> None:
    secret = secrets.token_hex(32)
    env = {
        "SANDBOX_SNAPSHOT_FORMAT": fmt,
        "S3_ENDPOINT": s3_server.endpoint,
        "S3_BUCKET": s3_bucket,
        "S3_ACCESS_KEY": s3_server.access_key,
        "S3_SECRET_KEY": s3_server.secret_key,
        # The restarted service is the same replica: its own unfinished snapshot is a dead writer's.
        "SANDBOX_REPLICA_ID": "replica-crash-test",
    }
    headers = {"Authorization": f"Bearer {make_token(secret.encode())}"}
    s3 = s3_server.client()

    first = live_server_factory(secret, **env)
    await asyncio.to_thread(first.start, 60.0)
    async with httpx.AsyncClient(base_url=first.url, timeout=120, headers=headers) as client:
        sandbox = (await client.post("/v1/sandboxes", json={})).json()
        made = await client.post(
            f"/v1/sandboxes/{sandbox['id']}/exec",
            json={"command": ["sh", "-c", "head -c 40000000 /dev/urandom > /workspace/big.bin"], "timeout_seconds": 60},
        )
        assert made.json()["exit_code"] == 0, made.text
        task = asyncio.create_task(client.post(f"/v1/sandboxes/{sandbox['id']}/snapshots", json={}))
        under_way = False
        for _ in range(600):  # until the upload is under way (bounded: 30 s)
            under_way = await asyncio.to_thread(_under_way, s3, s3_bucket, fmt)
            if under_way or task.done():
                break
            await asyncio.sleep(0.05)
        assert under_way and not task.done(), "the snapshot finished before its upload could be interrupted"
        first.kill()
        with contextlib.suppress(httpx.HTTPError):
            await task

    second = live_server_factory(secret, **env)
    await asyncio.to_thread(second.start, 60.0)
    async with httpx.AsyncClient(base_url=second.url, timeout=60, headers=headers) as client:
        listed = (await client.get(f"/v1/sandboxes/{sandbox['id']}/snapshots")).json()["snapshots"]
        assert [(s["status"], "interrupted" in (s.get("error") or "")) for s in listed] == [("failed", True)]
        left = await asyncio.to_thread(s3.list_multipart_uploads, Bucket=s3_bucket)
        assert not left.get("Uploads")
        objects = await asyncio.to_thread(s3.list_objects_v2, Bucket=s3_bucket, Prefix="snapshots/")
        assert not objects.get("Contents")  # v2: its chunks stay, indexed, for the collector
        again = await client.post(f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
        assert again.status_code == 201 and again.json()["status"] == "ready", again.text
        await client.delete(f"/v1/sandboxes/{sandbox['id']}")
