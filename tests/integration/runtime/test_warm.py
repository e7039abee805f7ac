"""The warm-pool flow of the supervisor: the env server boots before the claim.

The supervisor runs as a process (it becomes a subreaper and kills orphans at exit,
which must not happen to pytest), with the real git server and WebSocket control
plane, and a small Python stand-in for OpenCode that records the env it was started
with and the requests it answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sandbox_runtime.contract import SessionClaim
from tests.fixtures.runtime import (
    GIT_TOKEN,
    SANDBOX_TOKEN,
    ControlPlane,
    GitHttpServer,
    RuntimeProcess,
    free_port,
    make_runtime_env,
    session_config,
)

# Writes env-<pid>.json at start and appends every request line to requests-<pid>.log.
RECORDING_ENV_SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, out = int(sys.argv[1]), sys.argv[2]
with open(os.path.join(out, f"env-{os.getpid()}.json"), "w") as fh:
    json.dump(dict(os.environ), fh)
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _answer(self, body):
        if self.path != "/global/health":
            with open(os.path.join(out, f"requests-{os.getpid()}.log"), "a") as fh:
                fh.write(f"{self.command} {self.path}\\n")
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._answer({"healthy": True})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer({"id": "ses_warm"} if self.path == "/session" else True)
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


class WarmSandbox:
    """A warm runtime (``SESSION_CONFIG_FILE``, no session) and what its env servers recorded."""

    def __init__(self, tmp_path: Path, git_server: GitHttpServer, runtime_processes: list[RuntimeProcess]) -> None:
        self.records = tmp_path / "env-server"
        self.records.mkdir()
        script = tmp_path / "recording_env_server.py"
        script.write_text(RECORDING_ENV_SERVER)
        self.claim_file = tmp_path / "claim" / "claim.json"
        self.claim_file.parent.mkdir()  # as the run dir exists in a sandbox: watched with inotify
        port = free_port()
        env = make_runtime_env(
            tmp_path,
            git_server=git_server,
            control_plane_url="",
            session=None,
            env_server_cmd=f"{sys.executable} {script} {port} {self.records}",
            env_server_port=port,
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

    def claim(self, control_plane: ControlPlane, **user_env: str) -> None:
        claim = SessionClaim(
            session_config=session_config(session_id="sess-warm"),
            env={"CONTROL_PLANE_URL": control_plane.url, "SANDBOX_AUTH_TOKEN": SANDBOX_TOKEN, **user_env},
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


async def test_a_claim_without_env_of_its_own_keeps_the_warm_env_server(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")  # started and warmed up before any claim
    env_server = await warm.runtime.wait_child("env-server")
    standby = await warm.runtime.wait_child("bridge")  # started too, waiting for the session
    assert warm.requests_of(env_server) == ["GET /path"]
    assert control_plane.connections == 0

    warm.claim(control_plane)
    ready = await control_plane.wait_for("ready", timeout=30)
    assert ready["opencodeSessionId"] == "ses_warm"
    assert warm.runtime.child_pid("env-server") == env_server, "the same env server serves the session"
    assert warm.runtime.child_pid("bridge") == standby, "the standby bridge took the session"
    # The session's secrets reached the standby bridge through a pipe, not its process environment.
    assert SANDBOX_TOKEN not in Path(f"/proc/{standby}/environ").read_bytes().decode(errors="replace")
    assert warm.requests_of(env_server) == ["GET /path", "POST /session"], "no start.sh, same branch: state kept"
    events = [e.get("event") for e in warm.runtime.log_events()]
    assert "env_server.replacing" not in events and "child.crashed" not in events
    assert sum(e == "child.started" for e in events) == 2, "one env server, one bridge"
    # What a cold start would have given it: no secrets, nothing of the session.
    seen = warm.env_of(env_server)
    assert not {"SANDBOX_AUTH_TOKEN", "VCS_CLONE_TOKEN", "CONTROL_PLANE_URL", "SESSION_CONFIG_FILE"} & seen.keys()
    assert GIT_TOKEN not in json.dumps(seen) and SANDBOX_TOKEN not in json.dumps(seen)


async def test_a_claim_with_user_env_restarts_the_env_server_with_it(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    first = await warm.runtime.wait_child("env-server")
    assert "SESSION_VAR" not in warm.env_of(first)

    warm.claim(control_plane, SESSION_VAR="from the session")
    await control_plane.wait_for("ready", timeout=30)
    second = await warm.runtime.wait_child("env-server", other_than=first)
    assert warm.env_of(second)["SESSION_VAR"] == "from the session", "the agent sees the session's env"
    assert warm.requests_of(second) == ["POST /session"], "the bridge only ever met the new env server"
    assert SANDBOX_TOKEN not in json.dumps(warm.env_of(second))
    events = [e.get("event") for e in warm.runtime.log_events()]
    assert "env_server.replaced" in events
    assert "child.crashed" not in events, "a replacement is not a crash (no backoff, no budget)"


async def test_start_sh_runs_after_the_claim_and_the_warm_state_is_dropped(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    start_sh = 'echo "$CONTROL_PLANE_URL" > ../start.out\n'  # only known once claimed
    git_server.create_repo("acme", "widget", {".openinspect/start.sh": start_sh})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    env_server = await warm.runtime.wait_child("env-server")
    assert not (tmp_path / "workspace" / "start.out").exists()

    warm.claim(control_plane)
    await control_plane.wait_for("ready", timeout=30)
    assert (tmp_path / "workspace" / "start.out").read_text().strip() == control_plane.url
    assert warm.runtime.child_pid("env-server") == env_server
    # start.sh may have changed the repository's configuration: the warmed-up state goes first.
    assert warm.requests_of(env_server) == ["GET /path", "POST /instance/dispose", "POST /session"]


async def test_a_standby_bridge_lost_before_the_claim_is_replaced_by_a_new_one(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hi\n"})
    warm = WarmSandbox(tmp_path, git_server, runtime_processes)
    await warm.wait_event("env_server.warmed_up")
    standby = await warm.runtime.wait_child("bridge")
    os.killpg(standby, signal.SIGKILL)

    warm.claim(control_plane)
    await control_plane.wait_for("ready", timeout=30)
    assert await warm.runtime.wait_child("bridge", other_than=standby) != standby
    crashed = await warm.wait_event("child.crashed")
    assert crashed["child"] == "bridge" and "before the session" in crashed["reason"]
