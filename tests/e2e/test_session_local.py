"""Open-Inspect's create-sandbox, end to end, on real bubblewrap sandboxes.

The control plane is a WebSocket server in the test; the repository is served
by git's smart HTTP backend on 127.0.0.1 behind basic auth; the env server is
the real OpenCode, bound into the sandbox with the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.auth import make_token
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.runtime import GIT_TOKEN, OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane, GitHttpServer
from tests.support import private_local
from tests.support_snapshots import stored_archive


@pytest.fixture
async def session_service(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    opencode_bin: Path,
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Callable[[], dict[str, str]]]]:
    settings = make_settings(
        provider="local",
        data_dir=provider_workdir / "data",
        allowed_control_plane_hosts=["127.0.0.1"],
        vcs_clone_url_template=git_server.url_template,
        vcs_clone_token=SecretStr(GIT_TOKEN),
        local=private_local(opencode_dir=opencode_bin.parent.parent),
    )
    secret = settings.resolved_secrets()[0]
    async with serve_in_process(settings) as (app, raw, client):
        yield app, raw, lambda: {"Authorization": f"Bearer {make_token(secret)}"}
        for sandbox in await client.list_sandboxes():
            await client.delete(sandbox["id"])


def create_body(control_plane: ControlPlane, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "session_id": "sess-1",
        "repo_owner": "acme",
        "repo_name": "app",
        "control_plane_url": control_plane.url,
        "sandbox_auth_token": SANDBOX_TOKEN,
        "user_env_vars": dict(OPENCODE_OFFLINE),
    }
    body.update(overrides)
    return body


def sandbox_processes(app: Any, ref: str) -> list[int]:
    """Host pids running as the sandbox's own uid (the local provider gives each sandbox one)."""
    provider = app.state.services.provider.inner
    uid = provider._store.load_meta(ref).uid
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_create_sandbox_to_ready_prompt_snapshot_and_restore(
    session_service: Any, control_plane: ControlPlane, git_server: GitHttpServer
) -> None:
    app, raw, auth = session_service
    git_server.create_repo(
        "acme", "app", {"README.md": "hello\n", ".openinspect/setup.sh": "#!/bin/sh\necho setup-ran > .setup-marker\n"}
    )
    response = await raw.post("/api/create-sandbox", json=create_body(control_plane), headers=auth())
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert response.json()["success"] is True
    assert data["status"] == "running" and data["modal_object_id"] == data["provider_object_id"]
    assert isinstance(data["created_at"], float)

    ready = await control_plane.wait_for("ready", timeout=90)
    assert ready["sandboxId"] == data["sandbox_id"]
    session_id = ready["opencodeSessionId"]
    assert session_id
    assert control_plane.handshakes[0]["X-Sandbox-ID"] == data["sandbox_id"]

    exec_url = f"/v1/sandboxes/{data['sandbox_id']}/exec"
    check = await raw.post(
        exec_url,
        json={"command": "cat /workspace/app/.setup-marker; cat /workspace/app/.git/config; ls -a /workspace/app"},
        headers=auth(),
    )
    output = check.json()["stdout"]
    assert "setup-ran" in output
    assert GIT_TOKEN not in output and SANDBOX_TOKEN not in output
    for pid in sandbox_processes(app, data["provider_object_id"]):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert GIT_TOKEN.encode() not in cmdline and SANDBOX_TOKEN.encode() not in cmdline

    # No LLM key here: the prompt fails, and says so, acked.
    await control_plane.send({"type": "prompt", "messageId": "m1", "content": "say hi"})
    done = await control_plane.wait_for("execution_complete", timeout=120)
    assert done["success"] is False

    snap = await raw.post(
        "/api/snapshot-sandbox",
        json={"sandbox_id": data["provider_object_id"], "session_id": "sess-1", "reason": "idle"},
        headers=auth(),
    )
    assert snap.status_code == 200, snap.text
    image_id = snap.json()["data"]["image_id"]
    archive = await stored_archive(app.state.services.blobs, image_id)
    assert GIT_TOKEN.encode() not in archive and SANDBOX_TOKEN.encode() not in archive

    before = len(control_plane.received)
    restored = await raw.post(
        "/api/restore-sandbox",
        json={
            "snapshot_image_id": image_id,
            "session_config": {"session_id": "sess-1", "repo_owner": "acme", "repo_name": "app"},
            "control_plane_url": control_plane.url,
            "sandbox_auth_token": SANDBOX_TOKEN,
            "user_env_vars": dict(OPENCODE_OFFLINE),
        },
        headers=auth(),
    )
    assert restored.status_code == 200, restored.text
    new_id = restored.json()["data"]["sandbox_id"]
    assert new_id != data["sandbox_id"]
    again = await control_plane.wait_for("ready", timeout=90, after=before, sandboxId=new_id)
    assert again["opencodeSessionId"] == session_id  # the conversation continues


async def test_refusals_happen_before_anything_is_created(session_service: Any, control_plane: ControlPlane) -> None:
    app, raw, auth = session_service
    cases = [
        (create_body(control_plane, control_plane_url="https://evil.example.com/"), 400, "host_not_allowed"),
        (
            create_body(control_plane, user_env_vars={"VCS_CLONE_TOKEN": "x", "SANDBOX_ID": "y"}),
            422,
            "reserved_env_name",
        ),
        (create_body(control_plane, repo_image_id="img-1"), 400, "bad_request"),
        (create_body(control_plane, repo_image_id="rimg_00000000000000aa"), 404, "repo_image_not_found"),
        # Unknown fields are ignored on /api (tolerant input); a mistyped known one is refused.
        (create_body(control_plane, timeout_seconds=True), 400, "bad_request"),
        (create_body(control_plane, session_id=""), 400, "bad_request"),
    ]
    for body, status, code in cases:
        response = await raw.post("/api/create-sandbox", json=body, headers=auth())
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    reserved = await raw.post("/api/create-sandbox", json=cases[1][0], headers=auth())
    assert "SANDBOX_ID" in reserved.json()["error"] and "VCS_CLONE_TOKEN" in reserved.json()["error"]
    assert await app.state.services.provider.list({}) == []
    await asyncio.sleep(0)


async def test_v1_session_sandbox_and_its_refusals(
    session_service: Any, control_plane: ControlPlane, git_server: GitHttpServer
) -> None:
    _, raw, auth = session_service
    git_server.create_repo("acme", "lib", {"README.md": "lib\n"})
    session = {"session_id": "sess-v1", "control_plane_url": control_plane.url, "sandbox_auth_token": SANDBOX_TOKEN}
    body = {"repo": {"owner": "acme", "name": "lib"}, "session": session, "env": OPENCODE_OFFLINE, "labels": {"v": "1"}}
    response = await raw.post("/v1/sandboxes", json=body, headers=auth())
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["session_id"], created["repo"]) == ("sess-v1", "acme/lib")
    ready = await control_plane.wait_for("ready", timeout=90, sandboxId=created["id"])
    assert ready["opencodeSessionId"]
    for bad, status in [
        ({"repo": {"owner": "acme", "name": "lib"}}, 400),
        ({**body, "command": ["sleep", "1"]}, 400),
        ({"from_pool": "default"}, 404),  # a plain claim of a pool that does not exist
        ({**body, "env": {"BOOT_MODE": "build"}}, 422),
    ]:
        refused = await raw.post("/v1/sandboxes", json=bad, headers=auth())
        assert refused.status_code == status, refused.text
