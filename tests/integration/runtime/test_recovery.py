"""Warm-pool claim and bridge crash recovery, with the real OpenCode server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from sandbox_runtime.contract import SessionClaim
from tests.fixtures.runtime import (
    SANDBOX_TOKEN,
    ControlPlane,
    GitHttpServer,
    RuntimeProcess,
    free_port,
    git,
    make_runtime_env,
    outbox_pending,
    session_config,
)


async def test_warm_claim_then_bridge_crash_delivers_buffered_events_after_restart(
    tmp_path: Path,
    opencode_bin: Path,
    git_server: GitHttpServer,
    control_plane: ControlPlane,
    runtime_processes: list[RuntimeProcess],
) -> None:
    git_server.create_repo("acme", "widget", {"README.md": "hello\n"})
    feature_sha = git_server.commit("acme", "widget", {"feature.txt": "x\n"}, branch="feature")
    claim_file = tmp_path / "claim" / "session.json"
    port = free_port()
    # A warm sandbox: no session, no control plane yet; it boots the repo and waits.
    env = make_runtime_env(
        tmp_path,
        git_server=git_server,
        control_plane_url="",
        session=None,
        env_server_cmd=f"{opencode_bin} serve --port {port} --hostname 127.0.0.1",
        env_server_port=port,
        extra={"SESSION_CONFIG_FILE": str(claim_file)},
    )
    del env["SANDBOX_AUTH_TOKEN"]
    runtime = RuntimeProcess(env, tmp_path / "proc").start()
    runtime_processes.append(runtime)
    repo = tmp_path / "workspace" / "widget"
    for _ in range(600):
        if any(e.get("event") == "env_server.warmed_up" for e in runtime.log_events()):
            break
        await asyncio.sleep(0.05)
    # Booted and waiting: the env server already runs (and has warmed up), a standby bridge
    # waits for the session.
    assert any(e.get("event") == "session.waiting" for e in runtime.log_events())
    assert (repo / ".git").is_dir() and runtime.child_pid("env-server") is not None
    assert runtime.child_pid("bridge") is not None and control_plane.connections == 0
    env_server_pid = runtime.child_pid("env-server")

    # The claim: session on another branch, control plane and token arrive now.
    claim = SessionClaim(
        session_config=session_config(session_id="sess-warm", branch="feature"),
        env={"CONTROL_PLANE_URL": control_plane.url, "SANDBOX_AUTH_TOKEN": SANDBOX_TOKEN},
    )
    claim_file.parent.mkdir()
    (claim_file.parent / "tmp").write_text(claim.model_dump_json())
    os.replace(claim_file.parent / "tmp", claim_file)
    first_ready = await control_plane.wait_for("ready", timeout=90)
    assert not claim_file.exists(), "the claim holds secrets: the runtime deletes it"
    assert git("rev-parse", "HEAD", cwd=repo) == feature_sha
    assert git("symbolic-ref", "--short", "HEAD", cwd=repo) == "feature"
    assert runtime.child_pid("env-server") == env_server_pid, "a claim without env of its own keeps the env server"

    # Events produced while the control plane is unreachable go to the on-disk outbox...
    control_plane.auto_ack = False
    control_plane.refuse_status = 503
    await control_plane.send({"type": "prompt", "messageId": "msg-2", "content": "Say hi."})
    await control_plane.drop_connection()
    outbox = tmp_path / "workspace" / ".sandbox-runtime" / "outbox.jsonl"
    for _ in range(600):
        if "execution_complete" in outbox_pending(outbox).values():
            break
        await asyncio.sleep(0.05)
    pending = outbox_pending(outbox)
    assert sorted(pending.values()) == ["error", "execution_complete"]

    # ...and survive the bridge dying before they were delivered.
    bridge_pid = await runtime.wait_child("bridge")
    os.killpg(bridge_pid, signal.SIGKILL)
    await runtime.wait_child("bridge", other_than=bridge_pid)
    after = len(control_plane.received)
    control_plane.refuse_status = None
    control_plane.auto_ack = True
    ready = await control_plane.wait_for("ready", after=after, timeout=60)
    assert ready["opencodeSessionId"] == first_ready["opencodeSessionId"], "the session continues"
    done = await control_plane.wait_for("execution_complete", after=after, messageId="msg-2", timeout=30)
    assert done["success"] is False and done["ackId"] in pending
    await control_plane.wait_for("error", after=after, messageId="msg-2", timeout=30)
    assert {e["ackId"] for e in control_plane.received[after:] if e.get("ackId")} == set(pending)
    # Once the bridge has recorded the acks, nothing may come again (a resend before that
    # is legitimate at-least-once behaviour on a loaded machine, so it is not asserted).
    for _ in range(600):
        if not outbox_pending(outbox):
            break
        await asyncio.sleep(0.05)
    assert outbox_pending(outbox) == {}
    mark = len(control_plane.received)
    await asyncio.sleep(1.5)  # three resend intervals
    assert [e for e in control_plane.received[mark:] if e.get("ackId") in pending] == []

    os.kill(runtime.pid, signal.SIGTERM)
    assert await runtime.wait_exit(timeout=30) == 0
