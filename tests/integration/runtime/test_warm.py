"""The warm-pool flow of the supervisor: the env server boots before the claim.

The supervisor runs as a process (it becomes a subreaper and kills orphans at exit,
which must not happen to pytest), with the real git server and WebSocket control
plane, and a small Python stand-in for OpenCode that demands basic auth like OpenCode
(``OPENCODE_SERVER_PASSWORD``), serves a small provider catalogue, and records the env it
was started with and the requests it answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from sandbox_runtime.contract import SessionClaim
from tests.fixtures.runtime import (
    GIT_TOKEN,
    SANDBOX_TOKEN,
    ControlPlane,
    GitHttpServer,
    HttpRecorder,
    RuntimeProcess,
    free_port,
    make_runtime_env,
    session_config,
)

# Writes env-<pid>.json at start and appends every request ("METHOD path body") to
# requests-<pid>.log; refuses requests without the password from its environment (401).
RECORDING_ENV_SERVER = """
import base64, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, out = int(sys.argv[1]), sys.argv[2]
with open(os.path.join(out, f"env-{os.getpid()}.json"), "w") as fh:
    json.dump(dict(os.environ), fh)
user, password = os.environ.get("OPENCODE_SERVER_USERNAME", "opencode"), os.environ.get("OPENCODE_SERVER_PASSWORD")
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if password else None
CATALOGUE = {"data": [
    {"id": "anthropic", "methods": [{"type": "key"}, {"type": "env", "names": ["ANTHROPIC_API_KEY"]}]},
    {"id": "amazon-bedrock", "methods": [{"type": "env", "names": ["AWS_ACCESS_KEY_ID", "AWS_REGION"]}]},
]}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _answer(self, body, status=200):
        if expected and self.headers.get("Authorization") != expected:
            status, body = 401, {"error": "unauthorized"}
        if self.path != "/global/health":
            sent = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            with open(os.path.join(out, f"requests-{os.getpid()}.log"), "a") as fh:
                fh.write(f"{self.command} {self.path} {sent}".rstrip() + "\\n")
        data = json.dumps(body).encode()
        self.send_response(status); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._answer(CATALOGUE if self.path == "/api/integration" else {"healthy": True})
    def do_POST(self):
        self._answer({"id": "ses_warm"} if self.path == "/session" else True)
    def do_PUT(self):
        self._answer(True)
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""
WARM_UP = ["GET /path", "GET /api/integration"]


class WarmSandbox:
    """A warm runtime (``SESSION_CONFIG_FILE``, no session) and what its env servers recorded."""

    def __init__(
        self,
        tmp_path: Path,
        git_server: GitHttpServer,
        runtime_processes: list[RuntimeProcess],
        **overrides: str,
    ) -> None:
        self.records = tmp_path / "env-server"
        self.records.mkdir()
        self.run_dir = tmp_path / "run"
        script = tmp_path / "recording_env_server.py"
        script.write_text(RECORDING_ENV_SERVER)
        self.claim_file = tmp_path / "claim" / "claim.json"
        self.claim_file.parent.mkdir()  # as the run dir exists in a sandbox: watched with inotify
        self.port = free_port()
        env = make_runtime_env(
            tmp_path,
            git_server=git_server,
            control_plane_url="",
            session=None,
            env_server_cmd=f"{sys.executable} {script} {self.port} {self.records}",
            env_server_port=self.port,
            overrides=overrides,
            extra={"SESSION_CONFIG_FILE": str(self.claim_file)},
        )
        del env["SANDBOX_AUTH_TOKEN"]
        self.runtime = RuntimeProcess(env, tmp_path / "proc").start()
        runtime_processes.append(self.runtime)

    async def wait_event(self, event: str, timeout: float = 30) -> dict[str, Any]:
        for _ in range(int(timeout / 0.05)):
            found = [e for e in self.runtime.log_events() if e.get("event") == event]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event} within {timeout}s\n{self.runtime.stderr()[-3000:]}")

    def claim(self, control_plane_url: str, **env: str) -> None:
        claim = SessionClaim(
            session_config=session_config(session_id="sess-warm"),
            env={"CONTROL_PLANE_URL": control_plane_url, "SANDBOX_AUTH_TOKEN": SANDBOX_TOKEN, **env},
        )
        partial = self.claim_file.with_suffix(".tmp")
        partial.write_text(claim.model_dump_json())
        os.replace(partial, self.claim_file)

    def env_of(self, pid: int) -> dict[str, str]:
        env: dict[str, str] = json.loads((self.records / f"env-{pid}.json").read_text())
        return env

    def requests_of(self, pid: int) -> list[str]:
        path = self.records / f"requests-{pid}.log"
        return path.read_text().splitlines() if path.exists() else []

    def events(self) -> list[str]:
        return [str(e.get("event")) for e in self.runtime.log_events()]


def run_shell(argv: list[str], env: dict[str, str]) -> str:
    """What a shell the env server spawns prints (with the env server's environment)."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


async def test_a_claim_without_env_of_its_own_keeps_the_warm_env_server(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")  # started and warmed up before any claim
    env_server = await warm.runtime.wait_child("env-server")
    standby = await warm.runtime.wait_child("bridge")  # started too, waiting for the session
    assert warm.requests_of(env_server) == WARM_UP
    assert control_plane.connections == 0

    warm.claim(control_plane.url)
    ready = await control_plane.wait_for("ready", timeout=30)
    assert ready["opencodeSessionId"] == "ses_warm"
    assert warm.runtime.child_pid("env-server") == env_server, "the same env server serves the session"
    assert warm.runtime.child_pid("bridge") == standby, "the standby bridge took the session"
    # The session's secrets reached the standby bridge through a pipe, not its process environment.
    assert SANDBOX_TOKEN not in Path(f"/proc/{standby}/environ").read_bytes().decode(errors="replace")
    assert warm.requests_of(env_server) == [*WARM_UP, 'POST /session {"title":"session sess-warm"}']
    events = warm.events()
    assert "env_server.replacing" not in events and "child.crashed" not in events
    assert sum(e == "child.started" for e in events) == 2, "one env server, one bridge"
    # What a cold start would have given it: no secrets, nothing of the session.
    seen = warm.env_of(env_server)
    assert not {"SANDBOX_AUTH_TOKEN", "VCS_CLONE_TOKEN", "CONTROL_PLANE_URL", "SESSION_CONFIG_FILE"} & seen.keys()
    assert GIT_TOKEN not in json.dumps(seen) and SANDBOX_TOKEN not in json.dumps(seen)
    # Its password (which the supervisor's and the bridge's requests carried: else 401) is the
    # run dir's, and its shells load the session env file.
    assert seen["OPENCODE_SERVER_PASSWORD"] == (warm.run_dir / "env-server-auth").read_text().strip()
    assert (warm.run_dir / "env-server-auth").stat().st_mode & 0o777 == 0o600
    assert seen["BASH_ENV"] == seen["ENV"] == str(warm.run_dir / "session.env")


async def test_a_claim_with_user_env_hands_it_to_the_running_env_server(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    env_server = await warm.runtime.wait_child("env-server")
    assert "SESSION_VAR" not in warm.env_of(env_server)
    key = "sk-ant-warm-0d9c8b7a6f5e"

    warm.claim(control_plane.url, SESSION_VAR="it's from the session", ANTHROPIC_API_KEY=key, AWS_REGION="eu-west-1")
    await control_plane.wait_for("ready", timeout=30)
    assert warm.runtime.child_pid("env-server") == env_server, "no restart"
    events = warm.events()
    assert "env_server.replacing" not in events and "child.crashed" not in events
    # The provider key went through the env server's auth API, before the session started.
    auth = json.dumps({"type": "api", "key": key})
    assert warm.requests_of(env_server) == [
        *WARM_UP,
        f"PUT /auth/anthropic {auth}",
        'POST /session {"title":"session sess-warm"}',
    ]
    # Everything reaches the agent's shells, through the env file the env server's env names.
    env = warm.env_of(env_server)
    env_file = warm.run_dir / "session.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    probe = 'echo "$SESSION_VAR|$ANTHROPIC_API_KEY|$AWS_REGION|${OPENCODE_SERVER_PASSWORD-unset}"'
    expected = f"it's from the session|{key}|eu-west-1|unset"
    assert run_shell(["bash", "-c", probe], env) == expected  # the bash tool
    assert run_shell(["bash", "-l", "-c", probe], env) == expected  # the session shell endpoint
    assert run_shell(["sh", "-i", "-c", probe], env).splitlines()[-1] == expected  # interactive sh (ENV)
    assert run_shell(["bash", "-c", f"SESSION_VAR=mine bash -c {shlex.quote(probe)}"], env).startswith("mine|")
    logs = warm.runtime.stderr()
    assert key not in logs and "it's from the session" not in logs
    handed = await warm.wait_event("session_env.handed_over")
    assert handed["providers"] == ["anthropic"] and handed["restart_for"] == []


async def test_env_only_a_restart_applies_restarts_the_env_server(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    first = await warm.runtime.wait_child("env-server")

    warm.claim(control_plane.url, OPENCODE_PERMISSION='{"bash": "allow"}', SESSION_VAR="x")
    await control_plane.wait_for("ready", timeout=30)
    second = await warm.runtime.wait_child("env-server", other_than=first)
    assert warm.env_of(second)["OPENCODE_PERMISSION"] == '{"bash": "allow"}', "OpenCode reads it in its own process"
    assert warm.requests_of(second) == ['POST /session {"title":"session sess-warm"}'], "the bridge met the new one"
    assert SANDBOX_TOKEN not in json.dumps(warm.env_of(second))
    handed = await warm.wait_event("session_env.handed_over")
    assert handed["restart_for"] == ["OPENCODE_PERMISSION"]
    events = warm.events()
    assert "env_server.replaced" in events
    assert "child.crashed" not in events, "a replacement is not a crash (no backoff, no budget)"


async def test_a_claim_under_another_sandbox_id_is_reported_under_that_id(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    """The service binds the caller's id at a claim: the standby bridge must use it everywhere."""
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    env_server = await warm.runtime.wait_child("env-server")
    assert warm.runtime.env["SANDBOX_ID"] == "sbx-test"

    warm.claim(control_plane.url, SANDBOX_ID="oi-caller-7")
    ready = await control_plane.wait_for("ready", timeout=30)
    assert control_plane.handshakes[-1]["X-Sandbox-ID"] == "oi-caller-7"
    assert ready["sandboxId"] == "oi-caller-7"
    assert (await control_plane.wait_for("heartbeat", timeout=30))["sandboxId"] == "oi-caller-7"
    await control_plane.send({"type": "snapshot"})
    assert (await control_plane.wait_for("snapshot_ready", timeout=30))["sandboxId"] == "oi-caller-7"
    assert {e["sandboxId"] for e in control_plane.received} == {"oi-caller-7"}
    assert warm.runtime.child_pid("env-server") == env_server, "a new id is no reason to restart"


async def test_a_fatal_error_after_a_claim_is_reported_under_the_claimed_id(
    tmp_path: Path, git_server: GitHttpServer, http_recorder: HttpRecorder, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes, RESTART_MAX="0")
    await warm.wait_event("env_server.warmed_up")
    env_server = await warm.runtime.wait_child("env-server")
    http_recorder.get_status = 503  # the control plane is down for now: the bridge keeps trying

    warm.claim(http_recorder.url, SANDBOX_ID="oi-caller-8")
    await warm.wait_event("session.claimed")
    await warm.wait_event("child.started")
    os.killpg(env_server, signal.SIGKILL)  # past the restart budget (none): fatal
    assert await warm.runtime.wait_exit(timeout=60) == 1
    path, headers, body = http_recorder.posts[0]
    assert path == "/sandbox/oi-caller-8/error"
    assert headers["Authorization"] == f"Bearer {SANDBOX_TOKEN}" and body["fatal"] is True


async def test_start_sh_runs_after_the_claim_and_the_warm_state_is_dropped(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    start_sh = 'echo "$CONTROL_PLANE_URL" > ../start.out\n'  # only known once claimed
    git_server.create_repo("acme", "widget", {".openinspect/start.sh": start_sh})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    env_server = await warm.runtime.wait_child("env-server")
    assert not (tmp_path / "workspace" / "start.out").exists()

    warm.claim(control_plane.url)
    await control_plane.wait_for("ready", timeout=30)
    assert (tmp_path / "workspace" / "start.out").read_text().strip() == control_plane.url
    assert warm.runtime.child_pid("env-server") == env_server
    # start.sh may have changed the repository's configuration: the warmed-up state goes first.
    assert [r.split(" {")[0] for r in warm.requests_of(env_server)] == [
        *WARM_UP,
        "POST /instance/dispose",
        "POST /session",
    ]


async def test_a_standby_bridge_lost_before_the_claim_is_replaced_by_a_new_one(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    standby = await warm.runtime.wait_child("bridge")
    os.killpg(standby, signal.SIGKILL)

    warm.claim(control_plane.url)
    await control_plane.wait_for("ready", timeout=30)
    assert await warm.runtime.wait_child("bridge", other_than=standby) != standby
    crashed = await warm.wait_event("child.crashed")
    assert crashed["child"] == "bridge" and "before the session" in crashed["reason"]


def test_the_recording_server_demands_the_password(tmp_path: Path) -> None:
    """The stand-in refuses what OpenCode refuses, so the tests above show the runtime authenticates."""
    script = tmp_path / "server.py"
    script.write_text(RECORDING_ENV_SERVER)
    port = free_port()
    env = {**os.environ, "OPENCODE_SERVER_PASSWORD": "pw-1234"}
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(tmp_path)], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):  # until it listens (bounded)
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"{url}/global/health", timeout=1, trust_env=False)
                break
            time.sleep(0.05)
        assert answer.status_code == 401
        good = {"Authorization": "Basic " + base64.b64encode(b"opencode:pw-1234").decode()}
        assert httpx.get(f"{url}/path", headers=good, timeout=5, trust_env=False).status_code == 200
    finally:
        proc.kill()
        proc.wait()
