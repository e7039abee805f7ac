"""Several replicas on one PostgreSQL and one bucket, as real processes on the local provider.

Each replica is ``sandboxctl serve`` on its own port, all on one state store
(a fresh PostgreSQL database), one S3 bucket (the test's S3 server) and one
data dir (the local provider's sandboxes live there, shared like a Docker
engine would be). Leases are short so take-overs happen within seconds.
What the provider really holds is read from the local provider's sandbox
directories, independent of what any replica says.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import make_token
from app.services.builds import BUILD_LABEL
from app.storage.state import StateStore
from tests.fixtures.app import LiveServer
from tests.fixtures.callbacks import CALLBACK_SECRET, Receiver, until
from tests.fixtures.runtime import GIT_TOKEN, SANDBOX_TOKEN, ControlPlane, GitHttpServer
from tests.fixtures.s3 import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.s3]

LEASE_TTL = 2.0


class Cluster:
    """Replicas of one service, started and killed by the test."""

    def __init__(self, factory: Callable[..., LiveServer], env: dict[str, str], data_dir: Path) -> None:
        self._factory = factory
        self._env = env
        self._secret = secrets.token_hex(32)
        self._ids = itertools.count()
        self.data_dir = data_dir
        self.servers: list[LiveServer] = []

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(self._secret.encode())}"}

    async def start(self, count: int, **env: str) -> list[LiveServer]:
        started = []
        for _ in range(count):
            server = self._factory(self._secret, SANDBOX_REPLICA_ID=f"replica-{next(self._ids)}", **self._env, **env)
            await asyncio.to_thread(server.start, 60.0)
            started.append(server)
        self.servers += started
        return started

    def live(self) -> list[LiveServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    async def request(self, server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await client.request(method, path, headers=self.auth(), **kwargs)

    def provider_sandboxes(self) -> set[str]:
        """Sandbox directories of the local provider: what exists, whatever the records say."""
        root = self.data_dir / "local" / "sandboxes"
        return {p.name for p in root.iterdir()} if root.is_dir() else set()

    async def lease_holder(self, name: str) -> str | None:
        replicas = (await self.request(self.live()[0], "GET", "/v1/replicas")).json()["replicas"]
        holders = [r["id"] for r in replicas if any(lease["name"] == name for lease in r["leases"])]
        assert len(holders) <= 1, holders
        return holders[0] if holders else None


@pytest.fixture
async def cluster(
    live_server_factory: Callable[..., LiveServer],
    fresh_postgres_url: str,
    s3_server: S3Server,
    s3_bucket: str,
    git_server: GitHttpServer,
    provider_workdir: Path,
) -> AsyncIterator[Cluster]:
    env = {
        "SANDBOX_STATE_URL": fresh_postgres_url,
        "S3_ENDPOINT": s3_server.endpoint,
        "S3_BUCKET": s3_bucket,
        "S3_ACCESS_KEY": s3_server.access_key,
        "S3_SECRET_KEY": s3_server.secret_key,
        "S3_REGION": s3_server.region,
        "SANDBOX_LEASE_TTL": str(LEASE_TTL),
        "SANDBOX_RECONCILE_INTERVAL": "1",
        "SANDBOX_RECONCILE_GRACE": "2",
        "SANDBOX_POOL_INTERVAL": "0.5",
        "VCS_CLONE_URL_TEMPLATE": git_server.url_template,
        "SANDBOX_VCS_CLONE_TOKEN": GIT_TOKEN,
        "ALLOWED_CONTROL_PLANE_HOSTS": "127.0.0.1",
        "INTERNAL_CALLBACK_SECRET": CALLBACK_SECRET,
        "SANDBOX_CALLBACK_RETRY_BASE": "0.05",
        "SANDBOX_CALLBACK_RETRY_CAP": "0.3",
        "SANDBOX_CALLBACK_POLL_INTERVAL": "0.2",
        "SANDBOX_BUILD_POLL_INTERVAL": "0.1",
    }
    group = Cluster(live_server_factory, env, provider_workdir / "data")
    yield group
    live = group.live()
    if live:  # leave nothing running: delete what is left through a live replica
        listed = (await group.request(live[0], "GET", "/v1/sandboxes")).json().get("sandboxes", [])
        await asyncio.gather(*(group.request(live[0], "DELETE", f"/v1/sandboxes/{s['id']}") for s in listed))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("replica_count", [2, 3])
async def test_concurrent_creates_spread_over_replicas(cluster: Cluster, replica_count: int) -> None:
    servers = await cluster.start(replica_count)

    async def create(i: int) -> str:
        response = await cluster.request(
            servers[i % replica_count], "POST", "/v1/sandboxes", json={"labels": {"n": str(i)}}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    ids = await asyncio.wait_for(asyncio.gather(*(create(i) for i in range(40))), timeout=240)
    assert len(set(ids)) == 40
    for server in servers:  # every replica sees all forty
        listed = (await cluster.request(server, "GET", "/v1/sandboxes")).json()["sandboxes"]
        assert sorted(s["id"] for s in listed) == sorted(ids)
    assert len(cluster.provider_sandboxes()) == 40  # no duplicate provider object

    holder = await cluster.lease_holder("job:reconcile")
    assert holder is not None  # exactly one replica reconciles
    await asyncio.sleep(3)  # a few reconciliation rounds
    listed = (await cluster.request(servers[-1], "GET", "/v1/sandboxes")).json()["sandboxes"]
    assert sorted(s["id"] for s in listed) == sorted(ids) and {s["status"] for s in listed} == {"running"}
    assert len(cluster.provider_sandboxes()) == 40  # and no orphan deleted a live one

    deleted = await asyncio.gather(
        *(cluster.request(servers[i % replica_count], "DELETE", f"/v1/sandboxes/{sid}") for i, sid in enumerate(ids))
    )
    assert {r.status_code for r in deleted} == {200}
    assert cluster.provider_sandboxes() == set()


async def test_graceful_stop_hands_leases_over_at_once(cluster: Cluster) -> None:
    first, second = await cluster.start(2)
    holder = await cluster.lease_holder("job:reconcile")
    runner = first if holder == "replica-0" else second
    other = second if runner is first else first
    readyz = (await cluster.request(runner, "GET", "/readyz")).json()
    assert readyz["replica"] == holder and "job:reconcile" in readyz["leases"]
    runner.stop()
    started = time.monotonic()
    # Handed back at shutdown: the other replica takes it at its next run (1 s), not after the TTL.
    await eventually(lambda: _holds(cluster, other, "job:reconcile"), "the other replica to take over", 10)
    assert time.monotonic() - started < LEASE_TTL + 2
    replicas = (await cluster.request(other, "GET", "/v1/replicas")).json()["replicas"]
    assert [r["id"] for r in replicas] == [(await cluster.request(other, "GET", "/readyz")).json()["replica"]]


async def _holds(cluster: Cluster, server: LiveServer, lease: str) -> bool:
    return lease in (await cluster.request(server, "GET", "/readyz")).json()["leases"]


async def test_a_pool_served_by_three_replicas_stays_at_its_target(
    cluster: Cluster, git_server: GitHttpServer, control_plane: ControlPlane
) -> None:
    git_server.create_repo("acme", "pooled", {"README.md": "hi\n"})
    servers = await cluster.start(3, SANDBOX_ENV_SERVER_CMD="sleep 600")
    put = {"repo": {"owner": "acme", "name": "pooled"}, "target": 5}
    assert (await cluster.request(servers[0], "PUT", "/v1/pools/p", json=put)).status_code == 200
    samples: list[int] = []

    async def ready() -> int:
        view = (await cluster.request(servers[len(samples) % 3], "GET", "/v1/pools/p")).json()
        samples.append(view["ready"] + view["creating"])
        return int(view["ready"])

    async def at_target() -> bool:
        return await ready() == 5

    await eventually(at_target, "five ready members", 180)
    for i in range(5):  # claims through every replica
        body = {
            "session_id": f"s-{i}",
            "sandbox_id": f"caller-{i}",
            "repo_owner": "acme",
            "repo_name": "pooled",
            "control_plane_url": control_plane.url,
            "sandbox_auth_token": SANDBOX_TOKEN,
        }
        claimed = await cluster.request(servers[i % 3], "POST", "/api/create-sandbox", json=body)
        assert claimed.json()["data"]["sandbox_id"] == f"caller-{i}"
        await eventually(at_target, "the pool refilled", 180)
    # One maintainer at a time: never more members than the target.
    assert max(samples) <= 5, samples
    view = (await cluster.request(servers[2], "GET", "/v1/pools/p")).json()
    assert (view["ready"], view["claimed"]) == (5, 5)
    assert (await cluster.request(servers[0], "DELETE", "/v1/pools/p")).status_code == 200


async def _build_sandboxes(url: str, build_id: str) -> int:
    """Every build sandbox ever recorded for ``build_id`` (deleted ones too)."""
    store = StateStore(url)
    await store.open()
    try:
        return len(await store.sandboxes.list({BUILD_LABEL: build_id}, include_deleted=True))
    finally:
        await store.aclose()


async def _submit_build(cluster: Cluster, server: LiveServer, base: str, build_id: str, repo: str) -> None:
    body = {"repo_owner": "acme", "repo_name": repo, "build_id": build_id, "callback_url": f"{base}/b/{build_id}/ok"}
    answer = await cluster.request(server, "POST", "/api/build-repo-image", json=body)
    assert answer.json()["data"]["status"] == "building", answer.text


async def test_sigkill_of_the_build_runner_another_replica_takes_over(
    cluster: Cluster,
    git_server: GitHttpServer,
    callback_receiver: tuple[Receiver, str],
    fresh_postgres_url: str,
) -> None:
    calls, base = callback_receiver
    setup = "#!/bin/sh\necho phase-one\nsleep 6\necho phase-two\n"
    git_server.create_repo("acme", "app", {".openinspect/setup.sh": setup})
    servers = await cluster.start(2)
    await _submit_build(cluster, servers[0], base, "k-1", "app")

    async def running() -> bool:
        view = (await cluster.request(cluster.live()[0], "GET", "/v1/builds/k-1")).json()
        return bool(view["status"] == "building" and view["log_bytes"] > 0)

    await eventually(running, "the build to run", 120)
    holder = await cluster.lease_holder("build:k-1")
    replica_ids = [(await cluster.request(s, "GET", "/readyz")).json()["replica"] for s in servers]
    runner = servers[replica_ids.index(holder)]
    runner.kill()
    killed_at = time.monotonic()
    survivor = cluster.live()[0]
    await eventually(lambda: _holds(cluster, survivor, "build:k-1"), "the take-over", 30)
    assert time.monotonic() - killed_at < 3 * LEASE_TTL + 2  # within the lease expiry plus one sweep
    await until(lambda: calls.deliveries["build:k-1:ready"] >= 1, "the success callback", 120)
    await asyncio.sleep(1)
    assert calls.deliveries["build:k-1:ready"] == 1 and calls.rejected == 0
    assert await _build_sandboxes(fresh_postgres_url, "k-1") == 1
    log = (await cluster.request(survivor, "GET", "/v1/builds/k-1/logs")).text
    assert log.count("phase-one") == 1 and "phase-two" in log  # followed on, from the recorded offset


async def test_a_build_resumed_after_all_replicas_restart_runs_once(
    cluster: Cluster,
    git_server: GitHttpServer,
    callback_receiver: tuple[Receiver, str],
    fresh_postgres_url: str,
) -> None:
    calls, base = callback_receiver
    git_server.create_repo("acme", "lib", {".openinspect/setup.sh": "#!/bin/sh\necho start\nsleep 4\necho end\n"})
    first = await cluster.start(2)
    await _submit_build(cluster, first[0], base, "k-2", "lib")

    async def building() -> bool:
        view = (await cluster.request(first[1], "GET", "/v1/builds/k-2")).json()
        return bool(view["status"] == "building" and view["sandbox_id"])

    await eventually(building, "the build sandbox", 120)
    for server in first:
        server.kill()
    await cluster.start(2)
    await until(lambda: calls.deliveries["build:k-2:ready"] >= 1, "the success callback", 120)
    await asyncio.sleep(1)
    assert calls.deliveries["build:k-2:ready"] == 1
    assert await _build_sandboxes(fresh_postgres_url, "k-2") == 1


async def test_sigkill_mid_create_leaves_no_stuck_record_and_no_orphan(cluster: Cluster) -> None:
    victim, survivor = await cluster.start(2)

    async def create(i: int) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the replica died under it
            await cluster.request(victim, "POST", "/v1/sandboxes", json={"labels": {"k": str(i)}})

    creates = [asyncio.create_task(create(i)) for i in range(8)]
    await asyncio.sleep(0.4)  # some are in the provider's create right now
    victim.kill()
    await asyncio.gather(*creates)

    async def settled() -> bool:
        listed = (await cluster.request(survivor, "GET", "/v1/sandboxes")).json()["sandboxes"]
        live_refs = {s["provider_object_id"] for s in listed if s["status"] in ("running", "stopped")}
        stuck = [s for s in listed if s["status"] == "creating"]
        return not stuck and cluster.provider_sandboxes() == live_refs

    # The dead replica's leases and its creates are taken care of once its heartbeat is stale.
    await eventually(settled, "no record creating, provider objects == live records", 60)
    listed = (await cluster.request(survivor, "GET", "/v1/sandboxes")).json()["sandboxes"]
    for sandbox in listed:
        events = (await cluster.request(survivor, "GET", f"/v1/sandboxes/{sandbox['id']}/events")).json()["events"]
        if any(e["kind"] == "adopted" for e in events):  # nobody may know it: it must not run forever
            assert sandbox["expires_at"] is not None, sandbox
