"""A warm claim that brings user env vars stays warm: bubblewrap sandboxes, the service's pool
API, the real OpenCode, the real git server and a WebSocket control plane.

The agent's commands are run through OpenCode's own API (``POST /session/{id}/shell``: a
shell command in a session, no model involved), from inside the sandbox with the env
server's password. They print digests of the session's values rather than the values:
whatever a command prints lands in the conversation, which a snapshot takes along.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.services.pool_members import POOL_LABEL
from app.settings import Settings
from tests.e2e.test_pools_local import auth_for, delete_all, pool_settings, wait_pool
from tests.fixtures.app import serve_in_process
from tests.fixtures.runtime import SANDBOX_TOKEN, ControlPlane, GitHttpServer
from tests.support import private_local
from tests.support_snapshots import stored_archive

SECRET = "e2e-secret-token-5b1f0c9d8e7a"
API_KEY = "sk-ant-e2e-3c2b1a0f9e8d7c6b"
PLAIN = "a plain setting with 'quotes'"
RUN_DIR = "/tmp/sandbox-runtime"

# Runs inside the sandbox: OpenCode's API on its loopback port, with the password from the run dir.
OPENCODE_SHELL = """
import base64, json, os, sys, urllib.request
port = os.environ.get("ENV_SERVER_PORT", "4096")
password = open("/tmp/sandbox-runtime/env-server-auth").read().strip()
headers = {"Authorization": "Basic " + base64.b64encode(f"opencode:{password}".encode()).decode(),
           "Content-Type": "application/json"}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method)
    with opener.open(request, timeout=120) as answer:
        return json.load(answer)
session = call("POST", "/session", {"title": "e2e"})["id"]
model = {"providerID": "anthropic", "modelID": "claude-sonnet-4-6"}
ran = call("POST", f"/session/{session}/shell", {"agent": "build", "model": model, "command": sys.argv[1]})
outputs = [part["state"]["output"] for part in ran["parts"] if part.get("type") == "tool"]
print(json.dumps({"outputs": outputs, "connected": call("GET", "/provider")["connected"]}))
"""
COMMAND = (
    'printf %s "$E2E_SECRET_TOKEN" | sha256sum; printf %s "$ANTHROPIC_API_KEY" | sha256sum; '
    'printf %s "$PLAIN_SETTING" | sha256sum; echo "password:${OPENCODE_SERVER_PASSWORD-unset}"'
)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def wait_warmed_up(app: Any, data_dir: Path, timeout: float = 120) -> Path:
    """The sandbox dir of the pool's ready member whose env server has booted and warmed up (its runtime log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in await app.state.services.sandboxes.list({POOL_LABEL: "env"}):
            if member.status != "warm" or member.provider_object_id is None:
                continue
            root = data_dir / "local" / "sandboxes" / member.provider_object_id
            with contextlib.suppress(OSError):
                if b'"event": "env_server.warmed_up"' in (root / "init.log").read_bytes():
                    return root
        await asyncio.sleep(0.25)
    raise AssertionError("no warmed-up member")


async def test_a_claim_with_user_env_keeps_the_env_server_and_snapshots_keep_no_value(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    opencode_bin: Path,
    control_plane: ControlPlane,
) -> None:
    git_server.create_repo("acme", "app", {"README.md": "hi\n"})
    settings = pool_settings(
        make_settings, provider_workdir, git_server, local=private_local(opencode_dir=opencode_bin.parent.parent)
    )
    auth = auth_for(settings)
    data_dir = provider_workdir / "data"
    async with serve_in_process(settings) as (app, raw, _client):

        async def run(sandbox_id: str, command: list[str] | str) -> dict[str, Any]:
            answer = await raw.post(
                f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command, "timeout_seconds": 120}, headers=auth()
            )
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        try:
            put = {"repo": {"owner": "acme", "name": "app"}, "target": 1}
            assert (await raw.put("/v1/pools/env", json=put, headers=auth())).status_code == 200
            await wait_pool(raw, auth, "env", ready=1)
            member = await wait_warmed_up(app, data_dir)
            env_server_pid = member / "tmp" / "sandbox-runtime" / "env-server.pid"  # the sandbox's /tmp
            env_server = env_server_pid.read_text()

            body = {
                "session_id": "sess-env",
                "repo_owner": "acme",
                "repo_name": "app",
                "control_plane_url": control_plane.url,
                "sandbox_auth_token": SANDBOX_TOKEN,
                "user_env_vars": {"E2E_SECRET_TOKEN": SECRET, "ANTHROPIC_API_KEY": API_KEY, "PLAIN_SETTING": PLAIN},
            }
            created = await raw.post("/api/create-sandbox", json=body, headers=auth())
            assert created.status_code == 200, created.text
            sandbox_id = created.json()["data"]["sandbox_id"]
            assert (await app.state.services.sandboxes.get(sandbox_id)).provider_object_id == member.name
            await control_plane.wait_for("ready", timeout=90)

            # Claimed: the env server that booted before the claim is the one serving the session.
            assert env_server_pid.read_text() == env_server
            init_log = (member / "init.log").read_text()
            assert '"event": "env_server.replacing"' not in init_log
            assert SECRET not in init_log and API_KEY not in init_log

            # The agent's commands see every value; its shells do not see the env server's password.
            shell = await run(sandbox_id, ["python3", "-c", OPENCODE_SHELL, COMMAND])
            assert shell["exit_code"] == 0, shell["stderr"]
            answer = json.loads(shell["stdout"])
            output = "".join(answer["outputs"])
            for value in (SECRET, API_KEY, PLAIN):
                assert digest(value) in output
            assert "password:unset" in output
            assert "anthropic" in answer["connected"], "the key reached OpenCode through its auth API"

            # The snapshot's secret check knows the claim's values: one left in the workspace is refused...
            leak = f'. {RUN_DIR}/session.env; printf %s "$E2E_SECRET_TOKEN" > /workspace/app/leak.txt'
            assert (await run(sandbox_id, ["sh", "-c", leak]))["exit_code"] == 0
            refused = await raw.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={}, headers=auth())
            assert (refused.status_code, refused.json()["code"]) == (422, "snapshot_unsafe_entry"), refused.text
            # ...and without it the snapshot holds none of them (the env file and the password live in
            # the run dir; the key OpenCode stored under the workspace is left out).
            assert (await run(sandbox_id, ["rm", "/workspace/app/leak.txt"]))["exit_code"] == 0
            snap = await raw.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={}, headers=auth())
            assert snap.status_code == 201, snap.text
            archive = await stored_archive(app.state.services.blobs, snap.json()["id"])
            for value in (SECRET, API_KEY, PLAIN):
                assert value.encode() not in archive
            assert b"opencode.db" in archive and digest(SECRET).encode() in archive, "the conversation is kept"
        finally:
            await delete_all(app)
