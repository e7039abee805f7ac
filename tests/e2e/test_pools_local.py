"""Warm pools end to end on real bubblewrap sandboxes, the real git server and OpenCode.

"Ready" means the member's runtime has cloned the repository, run setup.sh and
now waits for its claim (the runtime's claim-waiting marker exists); the
maintainer polls for it and moves the member from booting to ``warm``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from app.auth import make_token
from app.services.pool_members import POOL_LABEL
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.runtime import GIT_TOKEN, OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane, GitHttpServer
from tests.support import private_local

SETUP = "#!/bin/sh\necho ran >> .setup-count\necho built > .from-setup\n"


def pool_settings(make_settings: Callable[..., Settings], workdir: Path, git: GitHttpServer, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "provider": "local",
        "data_dir": workdir / "data",
        "allowed_control_plane_hosts": ["127.0.0.1"],
        "vcs_clone_url_template": git.url_template,
        "vcs_clone_token": SecretStr(GIT_TOKEN),
        "pool_interval_seconds": 1.0,
    }
    values.update(extra)
    return make_settings(**values)


def auth_for(settings: Settings) -> Callable[[], dict[str, str]]:
    secret = settings.resolved_secrets()[0]
    return lambda: {"Authorization": f"Bearer {make_token(secret)}"}


async def wait_pool(
    raw: httpx.AsyncClient, auth: Callable[[], dict[str, str]], name: str, timeout: float = 90, **want: int
) -> dict[str, Any]:
    """Poll GET /v1/pools/{name} until every field in ``want`` has its value (bounded)."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = (await raw.get(f"/v1/pools/{name}", headers=auth())).json()
        if all(view.get(k) == v for k, v in want.items()):
            return view
        await asyncio.sleep(0.25)
    raise AssertionError(f"pool {name} never reached {want}: {view}")


async def delete_all(app: Any) -> None:
    # Refills first: one started after the listing below would outlive the test.
    await app.state.services.pools.maintainer.aclose()
    sandboxes = app.state.services.sandboxes
    await asyncio.gather(*(sandboxes.delete(r.id) for r in await sandboxes.list()), return_exceptions=True)


async def test_pool_warms_and_a_claim_becomes_the_session(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    opencode_bin: Path,
    control_plane: ControlPlane,
) -> None:
    git_server.create_repo("acme", "app", {"README.md": "hi\n", ".openinspect/setup.sh": SETUP})
    settings = pool_settings(
        make_settings, provider_workdir, git_server, local=private_local(opencode_dir=opencode_bin.parent.parent)
    )
    auth = auth_for(settings)
    async with serve_in_process(settings) as (app, raw, _client):
        try:
            put = await raw.put(
                "/v1/pools/app", json={"repo": {"owner": "acme", "name": "app"}, "target": 2}, headers=auth()
            )
            assert put.status_code == 200, put.text
            await wait_pool(raw, auth, "app", ready=2, creating=0)
            members = {r.id for r in await app.state.services.sandboxes.list({POOL_LABEL: "app"})}

            body = {
                "session_id": "sess-pool",
                "sandbox_id": "oi-sandbox-1",
                "repo_owner": "acme",
                "repo_name": "app",
                "control_plane_url": control_plane.url,
                "sandbox_auth_token": SANDBOX_TOKEN,
                "user_env_vars": dict(OPENCODE_OFFLINE),
            }
            response = await raw.post("/api/create-sandbox", json=body, headers=auth())
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            # The claim binds the caller's id: the control plane checks it on the handshake.
            assert data["sandbox_id"] == "oi-sandbox-1" and data["status"] == "running"
            ready = await control_plane.wait_for("ready", timeout=90, sandboxId="oi-sandbox-1")
            assert ready["opencodeSessionId"]
            assert control_plane.handshakes[-1]["X-Sandbox-ID"] == "oi-sandbox-1"
            record = await app.state.services.sandboxes.get("oi-sandbox-1")
            assert record.key in members  # the member's former id is its stable key
            for alias in (record.key, record.provider_object_id):
                found = (await raw.get(f"/v1/sandboxes/{alias}", headers=auth())).json()
                assert found["id"] == "oi-sandbox-1"

            check = await raw.post(
                f"/v1/sandboxes/{data['sandbox_id']}/exec",
                json={"command": "cd /workspace/app && wc -l < .setup-count && cat .from-setup"},
                headers=auth(),
            )
            assert check.json()["stdout"].split() == ["1", "built"]  # setup.sh ran once, at warm-up
            claimed = (await raw.get(f"/v1/sandboxes/{data['sandbox_id']}", headers=auth())).json()
            assert claimed["session_id"] == "sess-pool"
            events = [
                e["kind"] for e in (await raw.get("/v1/sandboxes/oi-sandbox-1/events", headers=auth())).json()["events"]
            ]
            assert events[0] == "created" and "pool_member_ready" in events and events[-1] == "claimed"

            view = await wait_pool(raw, auth, "app", ready=2, claimed=1)  # refilled behind the claim
            assert view["creating"] == 0
        finally:
            await delete_all(app)


async def test_concurrent_claims_never_share_a_member(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    control_plane: ControlPlane,
) -> None:
    """50 concurrent claims on a pool of 10: 10 claimed, each once; 40 cold. No env server awaited."""
    git_server.create_repo("acme", "load", {"README.md": "hi\n", ".openinspect/setup.sh": SETUP})
    settings = pool_settings(
        make_settings, provider_workdir, git_server, env_server_cmd="sleep 600", pool_create_concurrency=8
    )
    auth = auth_for(settings)
    async with serve_in_process(settings) as (app, raw, _client):
        try:
            put = {"repo": {"owner": "acme", "name": "load"}, "target": 10}
            assert (await raw.put("/v1/pools/load", json=put, headers=auth())).status_code == 200
            await wait_pool(raw, auth, "load", timeout=100, ready=10)
            members = {r.id for r in await app.state.services.sandboxes.list({POOL_LABEL: "load"})}
            # Freeze the pool (no refill), so "claimed" below can only come from the ten.
            await app.state.services.pools.maintainer.aclose()

            # All 50 at once: they race for the 10 members (the store-level test also
            # races 50 claimers across two store instances).
            async def claim(i: int) -> str:
                body = {
                    "session_id": f"sess-{i}",
                    "repo_owner": "acme",
                    "repo_name": "load",
                    "control_plane_url": control_plane.url,
                    "sandbox_auth_token": SANDBOX_TOKEN,
                }
                response = await raw.post("/api/create-sandbox", json=body, headers=auth())
                assert response.status_code == 200, response.text
                return str(response.json()["data"]["sandbox_id"])

            ids = await asyncio.wait_for(asyncio.gather(*(claim(i) for i in range(50))), timeout=100)
            assert len(set(ids)) == 50  # no sandbox answered twice
            from_pool = [i for i in ids if i in members]
            assert len(from_pool) == 10  # every ready member went to exactly one claim
            records = {r.id: r for r in await app.state.services.sandboxes.list()}
            assert {records[i].session_id for i in from_pool} == {
                f"sess-{n}" for n, i in enumerate(ids) if i in members
            }
            cold = [records[i] for i in ids if i not in members]
            assert len(cold) == 40 and all(POOL_LABEL not in r.labels for r in cold)
        finally:
            await delete_all(app)


async def test_restart_finds_members_and_old_members_are_evicted(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
) -> None:
    git_server.create_repo("acme", "svc", {"README.md": "hi\n"})
    settings = pool_settings(make_settings, provider_workdir, git_server)
    auth = auth_for(settings)
    async with serve_in_process(settings) as (app, raw, _client):
        put = {"repo": {"owner": "acme", "name": "svc"}, "target": 2, "max_age_seconds": 3600}
        assert (await raw.put("/v1/pools/svc", json=put, headers=auth())).status_code == 200
        await wait_pool(raw, auth, "svc", ready=2)
        first = {r.id for r in await app.state.services.sandboxes.list({POOL_LABEL: "svc"})}
    # A new app instance on the same data dir: same members, still ready, none added.
    async with serve_in_process(settings) as (app, raw, _client):
        try:
            view = await wait_pool(raw, auth, "svc", ready=2)
            await app.state.services.pools.maintainer.maintain()
            assert {r.id for r in await app.state.services.sandboxes.list({POOL_LABEL: "svc"})} == first
            assert view["creating"] == 0

            # Young members are kept; once older than max_age they are replaced.
            put["max_age_seconds"] = 1
            assert (await raw.put("/v1/pools/svc", json=put, headers=auth())).status_code == 200
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                live = {r.id for r in await app.state.services.sandboxes.list({POOL_LABEL: "svc"})}
                if not live & first:
                    break
                await asyncio.sleep(0.25)
            for sandbox_id in first:
                record = await app.state.services.store.sandboxes.get(sandbox_id, include_deleted=True)
                assert record.status == "deleted" and "max_age" in (record.error or "")

            drained = await raw.delete("/v1/pools/svc", headers=auth())
            assert drained.status_code == 200
            await app.state.services.pools.maintainer.maintain()
            assert (await raw.get("/v1/pools", headers=auth())).json() == {"pools": []}
            leftover = [
                r for r in await app.state.services.sandboxes.list({POOL_LABEL: "svc"}) if r.status != "creating"
            ]
            assert leftover == []
        finally:
            await delete_all(app)
