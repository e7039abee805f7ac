"""The runtime end to end with the real OpenCode server, a git smart-HTTP server and a
WebSocket control plane, run as a host subprocess exactly as a sandbox would run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.fixtures.runtime import (
    GIT_TOKEN,
    SANDBOX_TOKEN,
    ControlPlane,
    GitHttpServer,
    RuntimeProcess,
    free_port,
    git,
    make_runtime_env,
    outbox_pending,
    pid_alive,
    processes_in_groups,
    session_config,
)

SETUP_SH = 'echo "setup ran in $PWD"\nenv > ../setup.env\necho ok > ../setup.marker\n'
# start.sh leaves a daemon behind in its own session: the supervisor must still stop it.
START_SH = (
    "echo ok > ../start.marker\nsetsid sh -c 'sleep 300 & echo $! > ../daemon.pid; wait' </dev/null >/dev/null 2>&1 &\n"
)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _cmdlines(pids: set[int]) -> str:
    text = []
    for pid in pids:
        with contextlib.suppress(OSError):
            text.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(text)


async def _health(port: int, password: str | None) -> int | None:
    auth = ("opencode", password) if password else None
    async with httpx.AsyncClient(trust_env=False, auth=auth) as client:
        try:
            return (await client.get(f"http://127.0.0.1:{port}/global/health", timeout=1.0)).status_code
        except httpx.HTTPError:
            return None


def _commit_as_anyone(repo: Path, home: Path, name: str) -> str:
    """Commit with no identity of the committer's own (as the agent's tools do); returns the author."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    (repo / name).write_text(f"{name}\n")
    for argv in (["git", "add", name], ["git", "commit", "-q", "-m", name]):
        subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True, timeout=30)
    return git("log", "-1", "--format=%an <%ae>|%cn <%ce>", cwd=repo)


async def test_fresh_boot_prompt_push_restart_sigterm_and_restore(
    tmp_path: Path,
    opencode_bin: Path,
    git_server: GitHttpServer,
    control_plane: ControlPlane,
    runtime_processes: list[RuntimeProcess],
) -> None:
    base_sha = git_server.create_repo(
        "acme", "widget", {"README.md": "hello\n", ".openinspect/setup.sh": SETUP_SH, ".openinspect/start.sh": START_SH}
    )
    port = free_port()
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url=control_plane.url,
        session=session_config(),
        env_server_cmd=f"{opencode_bin} serve --port {port} --hostname 127.0.0.1",
        env_server_port=port,
    )
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    workspace = tmp_path / "workspace"
    repo = workspace / "widget"

    ready = await control_plane.wait_for("ready", timeout=90)
    assert ready["sandboxId"] == "sbx-test"
    assert ready["opencodeSessionId"].startswith("ses")
    handshake = control_plane.handshakes[-1]
    assert handshake["Authorization"] == f"Bearer {SANDBOX_TOKEN}"
    assert handshake["X-Sandbox-ID"] == "sbx-test"

    # Boot: clone of the session branch through the credential helper, then both hooks.
    assert git("rev-parse", "HEAD", cwd=repo) == base_sha
    assert (workspace / "setup.marker").read_text() == "ok\n"
    assert (workspace / "start.marker").read_text() == "ok\n"
    assert any(not ok for _, _, ok in git_server.requests), "the server challenged first"
    assert any(ok for _, _, ok in git_server.requests), "the helper answered the challenge"
    # The state dir holds the session id the bridge continues.
    assert (workspace / ".sandbox-runtime" / "opencode-session-id").read_text().strip() == ready["opencodeSessionId"]

    # No token in .git/config, in any runtime process's argv, or in what hooks and the agent see.
    assert GIT_TOKEN not in (repo / ".git" / "config").read_text()
    setup_env = (workspace / "setup.env").read_text()
    assert GIT_TOKEN not in setup_env and SANDBOX_TOKEN not in setup_env
    env_server_pid = await runtime.wait_child("env-server")
    bridge_pid = await runtime.wait_child("bridge")
    cmdlines = _cmdlines(_descendants(runtime.pid))
    assert "sandbox_runtime.bridge" in cmdlines and "serve" in cmdlines
    assert GIT_TOKEN not in cmdlines and SANDBOX_TOKEN not in cmdlines
    env_server_environ = Path(f"/proc/{env_server_pid}/environ").read_bytes().decode(errors="replace")
    assert GIT_TOKEN not in env_server_environ and SANDBOX_TOKEN not in env_server_environ
    # The env server demands its password (made in the run dir, outside the workspace) of everyone.
    password = (tmp_path / "run" / "env-server-auth").read_text().strip()
    assert await _health(port, None) == 401 and await _health(port, "wrong") == 401
    assert await _health(port, password) == 200
    assert password not in runtime.stderr() + runtime.stdout()
    in_workspace = [f for f in workspace.rglob("*") if f.is_file() and password.encode() in f.read_bytes()]
    assert in_workspace == [], "nothing a snapshot takes holds the password"

    # A commit works before any prompt named an author: the fallback identity is configured.
    home = tmp_path / "home"
    fallback = "OpenInspect <open-inspect@noreply.github.com>"
    assert _commit_as_anyone(repo, home, "boot.txt") == f"{fallback}|{fallback}"

    # The env server dies: the supervisor brings it back, and the bridge keeps working with it.
    os.killpg(env_server_pid, signal.SIGKILL)
    env_server_pid = await runtime.wait_child("env-server", other_than=env_server_pid)
    for _ in range(600):
        if await _health(port, password) == 200:
            break
        await asyncio.sleep(0.1)
    assert await _health(port, password) == 200, "the restarted env server has the same password"

    # A prompt without any LLM key: error and a failed execution_complete, both acked once.
    await control_plane.send({"type": "prompt", "messageId": "msg-1", "content": "Say hi."})
    error = await control_plane.wait_for("error", messageId="msg-1", timeout=60)
    done = await control_plane.wait_for("execution_complete", messageId="msg-1", timeout=60)
    assert done["success"] is False and done["error"]
    assert error["ackId"] and done["ackId"] and error["ackId"] != done["ackId"]
    outbox = workspace / ".sandbox-runtime" / "outbox.jsonl"
    for _ in range(600):  # the bridge records the acks...
        if not outbox_pending(outbox):
            break
        await asyncio.sleep(0.05)
    mark = len(control_plane.received)
    await asyncio.sleep(1.5)  # ...and then, three resend intervals later, has sent nothing again
    assert [e for e in control_plane.received[mark:] if e.get("ackId") in (error["ackId"], done["ackId"])] == []

    # Each prompt's author signs the commits made while it runs: both spellings, else the fallback.
    authors = [
        ({"userId": "u1", "scmName": "Ada Lovelace", "scmEmail": "ada@example.com"}, "Ada Lovelace <ada@example.com>"),
        ({"githubName": "Grace Hopper", "githubEmail": "grace@example.com"}, "Grace Hopper <grace@example.com>"),
        (None, fallback),
    ]
    for n, (author, expected) in enumerate(authors):
        prompt = {"type": "prompt", "messageId": f"msg-a{n}", "content": "Commit.", "author": author}
        await control_plane.send({k: v for k, v in prompt.items() if v is not None})
        await control_plane.wait_for("execution_complete", messageId=f"msg-a{n}", timeout=60)
        assert _commit_as_anyone(repo, home, f"a{n}.txt") == f"{expected}|{expected}"

    # Push the agent's commit to a new branch through the credential helper.
    (repo / "feature.txt").write_text("agent work\n")
    git("add", "feature.txt", cwd=repo)
    git("commit", "-q", "-m", "agent work", cwd=repo)
    local_head = git("rev-parse", "HEAD", cwd=repo)
    await control_plane.send({"type": "push", "branchName": "agent/feature"})
    pushed = await control_plane.wait_for("push_complete", branchName="agent/feature", timeout=60)
    assert pushed["headSha"] == local_head
    assert git_server.head("acme", "widget", "agent/feature") == local_head
    # A push with a bad token fails without echoing the token.
    await control_plane.send({"type": "push", "branchName": "agent/other", "token": "bad-token-9f8e7d"})
    failed = await control_plane.wait_for("push_error", branchName="agent/other", timeout=60)
    assert "bad-token-9f8e7d" not in json.dumps(failed)

    # SIGTERM: bridge, then env server, each within the grace period; nothing left behind.
    groups = {env_server_pid, bridge_pid}
    os.kill(runtime.pid, signal.SIGTERM)
    assert await runtime.wait_exit(timeout=30) == 0
    assert processes_in_groups(groups) == []
    assert not pid_alive(env_server_pid) and not pid_alive(bridge_pid)
    assert runtime.child_pid("bridge") is None and runtime.child_pid("env-server") is None
    assert not pid_alive(int((workspace / "daemon.pid").read_text())), "orphans (and theirs) are killed too"

    logs = runtime.stderr() + runtime.stdout()
    assert GIT_TOKEN not in logs and SANDBOX_TOKEN not in logs
    assert runtime.stdout() == "", "stdout is reserved for the build result line"
    assert outbox_pending(outbox) == {}

    # Restore the same workspace (as a snapshot would): uncommitted work survives, setup.sh
    # does not run again, start.sh does, and the conversation continues in the same session.
    (repo / "uncommitted.txt").write_text("work in progress\n")
    (workspace / "setup.marker").unlink()
    (workspace / "start.marker").unlink()
    restored_env = {**env, "BOOT_MODE": "snapshot_restore"}
    restored = RuntimeProcess(restored_env, tmp_path / "proc-restored").start()
    runtime_processes.append(restored)
    mark = len(control_plane.received)
    again = await control_plane.wait_for("ready", after=mark, timeout=90)
    assert again["opencodeSessionId"] == ready["opencodeSessionId"]
    assert (repo / "uncommitted.txt").read_text() == "work in progress\n"
    assert git("rev-parse", "HEAD", cwd=repo) == local_head
    assert not (workspace / "setup.marker").exists() and (workspace / "start.marker").exists()
    os.kill(restored.pid, signal.SIGTERM)
    assert await restored.wait_exit(timeout=30) == 0
    assert not pid_alive(int((workspace / "daemon.pid").read_text()))
