"""Open-Inspect's sandbox API under a control plane as strict as the real one.

Real bubblewrap sandboxes, the real OpenCode, git's smart HTTP server; the
control plane (:mod:`tests.fixtures.control_plane`) records the sandbox id of
each session before the create call and refuses a handshake whose
``X-Sandbox-ID`` differs (403), whose token is wrong (401), or whose session is
stopped (410). Any refusal ends the session, so a sandbox that reaches
``ready`` proved it speaks under the caller's id.

Commit identity is checked with commits made by a command in the sandbox after
each prompt (no model is reachable here, so the agent itself cannot commit):
the identity lives in the repository's git config, so the agent's tools and any
command commit the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.services.pool_members import POOL_LABEL
from app.settings import Settings
from tests.e2e.test_pools_local import auth_for, delete_all, pool_settings, wait_pool
from tests.fixtures.app import serve_in_process
from tests.fixtures.control_plane import StrictControlPlane
from tests.fixtures.runtime import OPENCODE_OFFLINE, GitHttpServer, git
from tests.support import private_local

FALLBACK = "OpenInspect <open-inspect@noreply.github.com>"
TOKENS = {"sess-a": "token-for-session-a-0123456789", "sess-b": "token-for-session-b-0123456789"}


def create_body(plane: StrictControlPlane, session_id: str, sandbox_id: str, **extra: Any) -> dict[str, Any]:
    """What Open-Inspect's client sends, with the fields a Modal-era control plane adds."""
    plane.expect(session_id, sandbox_id, TOKENS[session_id])  # before the call, as the real one
    return {
        "session_id": session_id,
        "sandbox_id": sandbox_id,
        "repo_owner": "acme",
        "repo_name": "app",
        "control_plane_url": plane.url,
        "sandbox_auth_token": TOKENS[session_id],
        "user_env_vars": dict(OPENCODE_OFFLINE),
        "code_server_enabled": False,
        "mcp_servers": [],
        **extra,
    }


async def in_sandbox(raw: httpx.AsyncClient, auth: Callable[[], dict[str, str]], sandbox_id: str, cmd: str) -> str:
    response = await raw.post(
        f"/v1/sandboxes/{sandbox_id}/exec", json={"command": cmd, "cwd": "/workspace/app"}, headers=auth()
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["exit_code"] == 0, result
    return str(result["stdout"]).strip()


async def wait_status(raw: httpx.AsyncClient, auth: Callable[[], dict[str, str]], sandbox_id: str, want: str) -> None:
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        status = (await raw.get(f"/v1/sandboxes/{sandbox_id}", headers=auth())).json()["status"]
        if status == want:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{sandbox_id} stayed {status}, never {want}")


async def test_the_double_is_strict(strict_control_plane: StrictControlPlane) -> None:
    """The control plane refuses what the real one refuses (so passing below means something)."""
    plane = strict_control_plane
    plane.expect("sess-a", "oi-a", TOKENS["sess-a"])
    ws_url = plane.url.replace("http://", "ws://") + "/sessions/sess-a/ws?type=sandbox"
    cases = [
        ({"Authorization": "Bearer wrong", "X-Sandbox-ID": "oi-a"}, 401),
        ({"Authorization": f"Bearer {TOKENS['sess-a']}", "X-Sandbox-ID": "sbx_0123456789abcdef"}, 403),
    ]
    for headers, status in cases:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == status
    await plane.stop_session("sess-a")
    with pytest.raises(InvalidStatus) as gone:
        async with connect(ws_url, additional_headers={"Authorization": f"Bearer {TOKENS['sess-a']}"}):
            pass
    assert gone.value.response.status_code == 410


async def test_warm_claims_snapshot_and_restore_under_the_callers_ids(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    opencode_bin: Path,
    strict_control_plane: StrictControlPlane,
) -> None:
    plane = strict_control_plane
    base = git_server.create_repo("acme", "app", {"README.md": "first\n"})
    head = git_server.commit("acme", "app", {"README.md": "second\n"})
    settings = pool_settings(
        make_settings, provider_workdir, git_server, local=private_local(opencode_dir=opencode_bin.parent.parent)
    )
    auth = auth_for(settings)
    async with serve_in_process(settings) as (app, raw, _client):
        try:
            # Warm the repository as the control plane does (it has no URL to give yet), then
            # keep two members so both sessions below are claims.
            warm = await raw.post(
                "/api/warm-sandbox",
                json={"repo_owner": "acme", "repo_name": "app", "control_plane_url": ""},
                headers=auth(),
            )
            assert warm.status_code == 200, warm.text
            again = await raw.post(
                "/api/warm-sandbox",
                json={"repo_owner": "acme", "repo_name": "app", "control_plane_url": ""},
                headers=auth(),
            )
            # Warming twice warms one sandbox: the member still booting is the answer.
            assert again.json()["data"]["sandbox_id"] == warm.json()["data"]["sandbox_id"], again.text
            pool = (await raw.get("/v1/pools", headers=auth())).json()["pools"][0]
            put = await raw.put(
                f"/v1/pools/{pool['name']}",
                json={"repo": {"owner": "acme", "name": "app"}, "target": 2},
                headers=auth(),
            )
            assert put.status_code == 200, put.text
            await wait_pool(raw, auth, pool["name"], timeout=180, ready=2, creating=0)
            members = {r.id for r in await app.state.services.sandboxes.list({POOL_LABEL: pool["name"]})}

            # Two sessions; B starts from the first commit (base_sha), A from the branch head.
            bodies = [
                create_body(plane, "sess-a", "oi-a", sandbox_settings={"gpu": None}),
                create_body(plane, "sess-b", "oi-b", base_sha=base, working_branch_name="ignored"),
            ]
            answers = await asyncio.gather(
                *(raw.post("/api/create-sandbox", json=body, headers=auth()) for body in bodies)
            )
            for answer, sid in zip(answers, ("oi-a", "oi-b"), strict=True):
                assert answer.status_code == 200, answer.text
                assert answer.json()["data"]["sandbox_id"] == sid
            for session_id, sid in (("sess-a", "oi-a"), ("sess-b", "oi-b")):
                ready = await plane.wait_for(session_id, "ready", timeout=120)
                assert ready["sandboxId"] == sid
            assert plane.refused() == [], "every handshake carried the expected id and token"
            keys = {(await app.state.services.sandboxes.get(sid)).key for sid in ("oi-a", "oi-b")}
            assert len(keys) == 2 and keys <= members, "both sessions were claims of warm members"

            assert await in_sandbox(raw, auth, "oi-b", "git rev-parse HEAD; git branch --show-current") == (
                f"{base}\nmain"
            )
            assert await in_sandbox(raw, auth, "oi-a", "git rev-parse HEAD") == head

            # Commit identity: the prompt's author (new spelling), else the fallback.
            await plane.send(
                "sess-a",
                {
                    "type": "prompt",
                    "messageId": "m-a",
                    "content": "Commit.",
                    "author": {"userId": "u1", "scmName": "Ada Lovelace", "scmEmail": "ada@example.com"},
                    "reasoningEffort": "high",
                },
            )
            await plane.send("sess-b", {"type": "prompt", "messageId": "m-b", "content": "Commit."})
            await plane.wait_for("sess-a", "execution_complete", messageId="m-a", timeout=120)
            await plane.wait_for("sess-b", "execution_complete", messageId="m-b", timeout=120)
            commit = "git commit -q --allow-empty -m work && git log -1 --format='%an <%ae>'"
            assert await in_sandbox(raw, auth, "oi-a", commit) == "Ada Lovelace <ada@example.com>"
            assert await in_sandbox(raw, auth, "oi-b", commit) == FALLBACK

            # Snapshot A by the caller's id; the record carries it.
            await in_sandbox(raw, auth, "oi-a", "echo kept > work.txt")
            snap = await raw.post(
                "/api/snapshot-sandbox", json={"sandbox_id": "oi-a", "session_id": "sess-a"}, headers=auth()
            )
            assert snap.status_code == 200, snap.text
            image_id = snap.json()["data"]["image_id"]
            record = (await raw.get(f"/v1/snapshots/{image_id}", headers=auth())).json()
            assert record["sandbox_id"] == "oi-a" and record["session_id"] == "sess-a"

            # Restore it for the same session under a new id: the control plane expects that one now.
            plane.sessions["sess-a"].events.clear()
            plane.expect("sess-a", "oi-a2", TOKENS["sess-a"])
            restored = await raw.post(
                "/api/restore-sandbox",
                json={
                    "snapshot_image_id": image_id,
                    "sandbox_id": "oi-a2",
                    "session_config": {"session_id": "sess-a", "repo_owner": "acme", "repo_name": "app"},
                    "control_plane_url": plane.url,
                    "sandbox_auth_token": TOKENS["sess-a"],
                    "user_env_vars": dict(OPENCODE_OFFLINE),
                },
                headers=auth(),
            )
            assert restored.status_code == 200, restored.text
            assert restored.json()["data"]["sandbox_id"] == "oi-a2"
            ready = await plane.wait_for("sess-a", "ready", timeout=120)
            assert ready["sandboxId"] == "oi-a2"
            assert await in_sandbox(raw, auth, "oi-a2", "cat work.txt") == "kept"
            assert plane.refused() == []

            # The control plane stops session B: the bridge's next handshake gets 410, the
            # session is over and the sandbox stops on its own.
            await plane.stop_session("sess-b")
            await wait_status(raw, auth, "oi-b", "stopped")
            assert [h.status for h in plane.refused()] == [410]
            assert git("rev-parse", "main", cwd=git_server.bare("acme", "app")) == head
        finally:
            await delete_all(app)
