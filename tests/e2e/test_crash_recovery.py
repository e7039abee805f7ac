"""What a SIGKILL of the service leaves behind, seen by a client that retries with its Idempotency-Key."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable

import httpx

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
