"""Another sandbox on the host network cannot drive a session sandbox's env server.

Local sandboxes share the host's network namespace (``network: "host"``, the default), so
sandbox B reaches sandbox A's OpenCode on 127.0.0.1. The runtime starts OpenCode with a
password made inside A: B gets 401 on every route, while A's supervisor probes and bridge
(which read the password from A's run dir) keep working.
"""

from __future__ import annotations

import json
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

# Runs in a sandbox: the status of each request to the env server at 127.0.0.1:<port>.
PROBE = """
import base64, json, sys, urllib.error, urllib.request
port, password = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
statuses = {}
for method, path in (("GET", "/global/health"), ("GET", "/session"), ("POST", "/session"), ("PUT", "/auth/anthropic")):
    body = b"{}" if method != "GET" else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    if password:
        token = base64.b64encode(f"opencode:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with opener.open(request, timeout=30) as answer:
            statuses[f"{method} {path}"] = answer.status
    except urllib.error.HTTPError as error:
        statuses[f"{method} {path}"] = error.code
print(json.dumps(statuses))
"""


@pytest.fixture
async def service(
    make_settings: Callable[..., Settings], provider_workdir: Path, git_server: GitHttpServer, opencode_bin: Path
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


async def test_another_sandbox_gets_401_while_the_session_works(
    service: Any, control_plane: ControlPlane, git_server: GitHttpServer
) -> None:
    _app, raw, auth = service
    git_server.create_repo("acme", "app", {"README.md": "hi\n"})

    async def run(sandbox_id: str, command: list[str]) -> dict[str, Any]:
        answer = await raw.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": command}, headers=auth())
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    body = {
        "session_id": "sess-a",
        "repo_owner": "acme",
        "repo_name": "app",
        "control_plane_url": control_plane.url,
        "sandbox_auth_token": SANDBOX_TOKEN,
        "user_env_vars": dict(OPENCODE_OFFLINE),
    }
    created = await raw.post("/api/create-sandbox", json=body, headers=auth())
    assert created.status_code == 200, created.text
    victim = created.json()["data"]["sandbox_id"]
    await control_plane.wait_for("ready", timeout=90, sandboxId=victim)  # probes and bridge authenticate
    port = (await run(victim, ["sh", "-c", 'echo "${ENV_SERVER_PORT:-4096}"']))["stdout"].strip()

    other = await raw.post("/v1/sandboxes", json={"labels": {"role": "neighbour"}}, headers=auth())
    assert other.status_code == 201, other.text
    neighbour = other.json()["id"]
    probed = await run(neighbour, ["python3", "-c", PROBE, port])
    assert probed["exit_code"] == 0, probed["stderr"]
    assert set(json.loads(probed["stdout"]).values()) == {401}, probed["stdout"]
    guessed = await run(neighbour, ["python3", "-c", PROBE, port, "not-the-password"])
    assert set(json.loads(guessed["stdout"]).values()) == {401}
    # The neighbour has no way to the password: it lives in the victim's own /tmp.
    assert (await run(neighbour, ["cat", "/tmp/sandbox-runtime/env-server-auth"]))["exit_code"] != 0

    # Inside the victim, with the password from its run dir, the same API answers.
    password = (await run(victim, ["cat", "/tmp/sandbox-runtime/env-server-auth"]))["stdout"].strip()
    own = json.loads((await run(victim, ["python3", "-c", PROBE, port, password]))["stdout"])
    assert own["GET /global/health"] == 200 and own["GET /session"] == 200
    # The session still works: a prompt goes through the bridge to OpenCode and back (no LLM key: it fails).
    await control_plane.send({"type": "prompt", "messageId": "m1", "content": "hi"})
    done = await control_plane.wait_for("execution_complete", messageId="m1", timeout=120)
    # Failed for want of a model, not refused by the env server: its error names no 401
    # (only the error: ids and timestamps are random and may hold those digits).
    assert done["success"] is False and "401" not in str(done.get("error", "")), done
