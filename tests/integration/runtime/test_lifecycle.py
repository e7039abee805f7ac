"""Supervisor lifecycle without OpenCode: build mode, the restart budget, session end.

The env server here is a small Python stand-in (``FAKE_ENV_SERVER``) so these tests
need nothing but git and Python.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sandbox_runtime.contract import BUILD_COMPLETE_MARKER, BootMode, parse_build_result
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

# Answers the few OpenCode routes the bridge needs.
FAKE_ENV_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[1])
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/global/health": self._json(200, {"healthy": True, "version": "fake"})
        else: self._json(404, {})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json(200, {"id": "ses_fake"} if self.path == "/session" else True)
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _fake_env_server(tmp_path: Path, port: int) -> str:
    script = tmp_path / "fake_env_server.py"
    script.write_text(FAKE_ENV_SERVER)
    return f"{sys.executable} {script} {port}"


async def test_build_mode_prints_completion_line_with_head_sha(
    tmp_path: Path, git_server: GitHttpServer, runtime_processes: list[RuntimeProcess]
) -> None:
    sha = git_server.create_repo("acme", "widget", {".openinspect/setup.sh": "echo built > ../built.marker\n"})
    port = free_port()
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url="",
        session=None,
        boot_mode=BootMode.BUILD,
        env_server_cmd=_fake_env_server(tmp_path, port),
        env_server_port=port,
        overrides={"REPO_BRANCH": "main"},
    )
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    assert await runtime.wait_exit(timeout=60) == 0
    assert runtime.stdout().startswith(BUILD_COMPLETE_MARKER + " ")
    result = parse_build_result(runtime.stdout())
    assert result is not None and result.success and result.head_sha == sha and result.branch == "main"
    assert (tmp_path / "workspace" / "built.marker").exists()
    assert not any(e.get("event") == "child.started" for e in runtime.log_events()), "no env server in build mode"
    assert GIT_TOKEN not in runtime.stderr() + runtime.stdout()


async def test_build_mode_failing_setup_reports_output_tail(
    tmp_path: Path, git_server: GitHttpServer, runtime_processes: list[RuntimeProcess]
) -> None:
    setup = "echo preparing\necho 'npm ERR! missing dependency left-pad' >&2\nexit 7\n"
    git_server.create_repo("acme", "widget", {".openinspect/setup.sh": setup})
    port = free_port()
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url="",
        session=None,
        boot_mode=BootMode.BUILD,
        env_server_cmd=_fake_env_server(tmp_path, port),
        env_server_port=port,
    )
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    assert await runtime.wait_exit(timeout=60) == 1
    result = parse_build_result(runtime.stdout())
    assert result is not None and not result.success
    assert result.error is not None
    assert "exited 7" in result.error and "npm ERR! missing dependency left-pad" in result.error


async def test_env_server_crash_loop_reports_fatal_and_exits_non_zero(
    tmp_path: Path, git_server: GitHttpServer, http_recorder: HttpRecorder, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "x\n"})
    port = free_port()
    crash = f"{sys.executable} -c 'import sys, time; time.sleep(0.1); sys.exit(3)'"
    http_recorder.get_status = 503  # the bridge (started with the env server) keeps retrying meanwhile
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url=http_recorder.url,
        session=session_config(),
        env_server_cmd=crash,
        env_server_port=port,
    )
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    assert await runtime.wait_exit(timeout=60) == 1
    assert len(http_recorder.posts) == 1
    path, headers, body = http_recorder.posts[0]
    assert path == "/sandbox/sbx-test/error"
    assert headers["Authorization"] == f"Bearer {SANDBOX_TOKEN}"
    assert body["fatal"] is True and "env-server" in body["error"]
    events = runtime.log_events()
    assert sum(e.get("event") == "child.started" and e.get("child") == "env-server" for e in events) == 6
    assert sum(e.get("event") == "child.crashed" and e.get("child") == "env-server" for e in events) == 5
    assert SANDBOX_TOKEN not in runtime.stderr()


async def test_bridge_refused_with_404_ends_the_session_gracefully(
    tmp_path: Path, git_server: GitHttpServer, http_recorder: HttpRecorder, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "x\n"})
    port = free_port()
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url=http_recorder.url,  # its GET answers 404: the session is gone
        session=session_config(),
        env_server_cmd=_fake_env_server(tmp_path, port),
        env_server_port=port,
    )
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    assert await runtime.wait_exit(timeout=60) == 0
    events = runtime.log_events()
    assert any(e.get("event") == "session.over" and e.get("component") == "bridge" for e in events)
    assert http_recorder.posts == [], "a session end is not a fatal error"


async def test_a_hung_env_server_is_restarted(
    tmp_path: Path, git_server: GitHttpServer, control_plane: ControlPlane, runtime_processes: list[RuntimeProcess]
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "x\n"})
    port = free_port()
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url=control_plane.url,
        session=session_config(),
        env_server_cmd=_fake_env_server(tmp_path, port),
        env_server_port=port,
        overrides={"ENV_SERVER_LIVENESS_INTERVAL": "0.2"},
    )
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    await control_plane.wait_for("ready", timeout=30)
    first = await runtime.wait_child("env-server")
    os.kill(first, signal.SIGSTOP)  # alive but unresponsive
    second = await runtime.wait_child("env-server", other_than=first, timeout=30)
    assert second != first
    events = runtime.log_events()
    assert any(e.get("event") == "env_server.unresponsive" for e in events)
    assert control_plane.connections == 1, "the bridge was unaffected"
    os.kill(runtime.pid, signal.SIGTERM)
    assert await runtime.wait_exit(timeout=30) == 0
