"""The bridge in-process: a real WebSocket control plane, OpenCode behind an httpx.MockTransport.

The real OpenCode server is exercised by the integration tests; here its SSE stream is
scripted so the translation of every event kind is checked without an LLM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_runtime.bridge.buffer import DurableOutbox
from sandbox_runtime.bridge.client import Bridge, websocket_url
from sandbox_runtime.bridge.opencode import OpenCodeClient, PromptTranslator
from sandbox_runtime.bridge.protocol import ExecutionCompleteEvent
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.contract import EXIT_FATAL
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.sandbox_env import build_sandbox_env
from tests.fixtures.runtime import SANDBOX_TOKEN, ControlPlane, session_config

SID = "ses_mock"


def _assistant_turn(text: str = "Hello") -> list[dict[str, Any]]:
    """What OpenCode emits for a prompt that streams text and runs one tool."""

    def ev(kind: str, **props: Any) -> dict[str, Any]:
        return {"type": kind, "properties": {"sessionID": SID, **props}}

    def part(**fields: Any) -> dict[str, Any]:
        return {"type": "message.part.updated", "properties": {"sessionID": SID, "part": {"sessionID": SID, **fields}}}

    return [
        ev("message.updated", info={"id": "msg_user", "role": "user"}),
        part(id="prt_u", messageID="msg_user", type="text", text="the prompt itself"),
        ev("session.status", status={"type": "busy"}),
        ev("message.updated", info={"id": "msg_a", "role": "assistant"}),
        part(id="prt_s", messageID="msg_a", type="step-start"),
        part(id="prt_t", messageID="msg_a", type="text", text=""),
        ev("message.part.delta", messageID="msg_a", partID="prt_t", field="text", delta=text[:3]),
        ev("message.part.delta", messageID="msg_a", partID="prt_t", field="text", delta=text[3:]),
        part(id="prt_x", messageID="msg_a", type="tool", tool="bash", callID="call_1",
             state={"status": "pending", "input": {}}),
        part(id="prt_x", messageID="msg_a", type="tool", tool="bash", callID="call_1",
             state={"status": "running", "input": {"command": "ls"}}),
        part(id="prt_x", messageID="msg_a", type="tool", tool="bash", callID="call_1",
             state={"status": "completed", "input": {"command": "ls"}, "output": "README.md"}),
        part(id="prt_f", messageID="msg_a", type="step-finish", cost=0.01, tokens={"input": 5}, reason="stop"),
        {"type": "session.idle", "properties": {"sessionID": "ses_other"}},
        ev("session.status", status={"type": "idle"}),
    ]  # fmt: skip


class FakeOpenCode:
    """Just enough of the OpenCode API; ``script`` is what a prompt produces on ``/event``."""

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = script
        self.sessions = {SID}
        self.created = 0
        self.aborted = 0
        self.prompts: list[dict[str, Any]] = []
        self.up = asyncio.Event()  # the env server answers its health check
        self.up.set()
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def health(self, timeout: float) -> bool:
        return self.up.is_set()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if path == "/session" and method == "POST":
            self.created += 1
            return httpx.Response(200, json={"id": SID})
        if path.endswith("/prompt_async"):
            self.prompts.append(json.loads(request.content))
            for event in self.script:
                self._events.put_nowait(event)
            return httpx.Response(204)
        if path.endswith("/abort"):
            self.aborted += 1
            return httpx.Response(200, json=True)
        if path.startswith("/session/") and method == "GET":
            return httpx.Response(200 if path.rsplit("/", 1)[1] in self.sessions else 404, json={})
        if path == "/event":
            return httpx.Response(200, content=self._stream(), headers={"content-type": "text/event-stream"})
        return httpx.Response(404)

    async def _stream(self) -> AsyncIterator[bytes]:
        yield b'data: {"type":"server.connected","properties":{}}\n\n'
        for _ in range(10_000):
            event = await self._events.get()
            if event is None:
                return
            yield f"data: {json.dumps(event)}\n\n".encode()


def _config(
    tmp_path: Path, control_plane_url: str, opencode_session_id: str | None = None, **overrides: str
) -> RuntimeConfig:
    env = build_sandbox_env(
        sandbox_id="sbx-unit",
        repo_owner="acme",
        repo_name="widget",
        control_plane_url=control_plane_url,
        sandbox_auth_token=SANDBOX_TOKEN,
        session=session_config(session_id="sess-unit").model_copy(update={"opencode_session_id": opencode_session_id}),
        workspace_dir=str(tmp_path / "ws"),
        runtime_overrides={"BRIDGE_RESEND_INTERVAL": "0.2", "BRIDGE_HEARTBEAT_INTERVAL": "0.2", **overrides},
    )
    return RuntimeConfig.from_env(env)


def _bridge(config: RuntimeConfig, fake: FakeOpenCode) -> Bridge:
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), base_url="http://oc")
    return Bridge(
        config,
        opencode=OpenCodeClient("http://oc", http=http, health=fake.health),
        log=JsonLogger("bridge", stream=io.StringIO()),
    )


def test_websocket_url() -> None:
    assert websocket_url("https://cp.example.com/", "s") == "wss://cp.example.com/sessions/s/ws?type=sandbox"
    assert websocket_url("http://127.0.0.1:9", "s") == "ws://127.0.0.1:9/sessions/s/ws?type=sandbox"


def test_translator_ignores_other_sessions_and_user_parts() -> None:
    translator = PromptTranslator(SID, "m1")
    produced = [e for event in _assistant_turn() for e in translator.feed(event)]
    kinds = [e.type for e in produced]
    assert kinds == ["step_start", "token", "token", "tool_call", "tool_call", "step_finish"]
    assert translator.done and translator.success


def test_a_prompt_refused_before_any_answer_ends_with_its_error() -> None:
    """OpenCode fails a prompt it cannot take (an undecodable image) with an error and no idle."""
    translator = PromptTranslator(SID, "m1")
    error = {"name": "UnknownError", "data": {"message": "ImageDecodeError: Image could not be decoded"}}
    produced = translator.feed({"type": "session.error", "properties": {"sessionID": SID, "error": error}})
    assert [e.type for e in produced] == ["error"] and translator.done and not translator.success
    # Once an answer is under way, an error is followed by idle, which ends the prompt.
    translator = PromptTranslator(SID, "m2")
    for event in _assistant_turn()[:4]:
        translator.feed(event)
    translator.feed({"type": "session.error", "properties": {"sessionID": SID, "error": error}})
    assert not translator.done


async def test_prompt_events_snapshot_and_shutdown(tmp_path: Path, control_plane: ControlPlane) -> None:
    fake = FakeOpenCode(_assistant_turn())
    config = _config(tmp_path, control_plane.url, opencode_session_id=SID)
    bridge = _bridge(config, fake)
    run = asyncio.create_task(bridge.run())
    ready = await control_plane.wait_for("ready", timeout=10)
    assert ready == {**ready, "sandboxId": "sbx-unit", "opencodeSessionId": SID}
    assert config.session_id_file.read_text().strip() == SID

    await control_plane.send({"type": "prompt", "messageId": "m1", "content": "hi", "model": "openai/gpt-x"})
    done = await control_plane.wait_for("execution_complete", messageId="m1", timeout=10)
    assert done["success"] is True and done["ackId"]
    assert fake.prompts[0]["model"] == {"providerID": "openai", "modelID": "gpt-x"}
    events = [e for e in control_plane.received if e.get("messageId") == "m1"]
    assert [e["type"] for e in events] == [
        "step_start", "token", "token", "tool_call", "tool_call", "step_finish", "execution_complete"
    ]  # fmt: skip
    assert [e["content"] for e in events if e["type"] == "token"] == ["Hel", "Hello"]
    tools = [e for e in events if e["type"] == "tool_call"]
    assert [t["status"] for t in tools] == ["running", "completed"] and tools[1]["output"] == "README.md"

    await control_plane.send({"type": "snapshot"})
    snap = await control_plane.wait_for("snapshot_ready", timeout=10)
    assert snap["opencodeSessionId"] == SID and snap["ackId"]
    await control_plane.wait_for("heartbeat", timeout=10)
    await control_plane.send({"type": "bogus"})  # ignored, not fatal
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0
    assert fake.created == 0, "the session named by SESSION_CONFIG, known to the env server, is reused"


async def test_stop_aborts_the_running_prompt(tmp_path: Path, control_plane: ControlPlane) -> None:
    fake = FakeOpenCode(_assistant_turn()[:6])  # never reaches idle
    fake.sessions.clear()
    bridge = _bridge(_config(tmp_path, control_plane.url), fake)
    run = asyncio.create_task(bridge.run())
    await control_plane.wait_for("ready", timeout=10)
    assert fake.created == 1
    await control_plane.send({"type": "prompt", "messageId": "m2", "content": "loop forever"})
    await control_plane.wait_for("step_start", messageId="m2", timeout=10)
    await control_plane.send({"type": "prompt", "messageId": "m3", "content": "queued"})
    await control_plane.send({"type": "stop"})
    stopped = await control_plane.wait_for("execution_complete", messageId="m2", timeout=10)
    dropped = await control_plane.wait_for("execution_complete", messageId="m3", timeout=10)
    assert stopped["success"] is False and stopped["error"] == "stopped" and dropped["error"] == "stopped"
    assert fake.aborted == 1
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0


async def test_the_bridge_connects_while_the_env_server_boots_and_says_ready_first(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    fake = FakeOpenCode([])
    fake.up.clear()
    fake.sessions.clear()
    bridge = _bridge(_config(tmp_path, control_plane.url), fake)
    run = asyncio.create_task(bridge.run())
    for _ in range(400):
        if control_plane.connections:
            break
        await asyncio.sleep(0.025)
    assert control_plane.connections == 1, "connected before the env server is up"
    assert control_plane.received == [] and fake.created == 0, "nothing to say before the session exists"
    fake.up.set()
    ready = await control_plane.wait_for("ready", timeout=10)
    assert control_plane.received[0] is ready and ready["opencodeSessionId"] == SID and fake.created == 1
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0


async def test_an_env_server_that_never_gets_healthy_fails_the_bridge(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    fake = FakeOpenCode([])
    fake.up.clear()
    bridge = _bridge(_config(tmp_path, control_plane.url, ENV_SERVER_HEALTH_TIMEOUT="0.2"), fake)
    assert await asyncio.wait_for(bridge.run(), timeout=10) == EXIT_FATAL
    assert control_plane.of_type("ready") == []


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_handshake_refusal_means_the_session_is_over(
    tmp_path: Path, control_plane: ControlPlane, status: int
) -> None:
    control_plane.refuse_status = status
    bridge = _bridge(_config(tmp_path, control_plane.url), FakeOpenCode([]))
    assert await asyncio.wait_for(bridge.run(), timeout=10) == 0


async def test_unacked_events_are_resent_and_carried_over_to_a_new_bridge(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    control_plane.auto_ack = False
    config = _config(tmp_path, control_plane.url)
    first = _bridge(config, FakeOpenCode([]))
    run = asyncio.create_task(first.run())
    await control_plane.wait_for("ready", timeout=10)
    await control_plane.send({"type": "snapshot"})
    snap = await control_plane.wait_for("snapshot_ready", timeout=10)
    await control_plane.wait_for("snapshot_ready", after=control_plane.received.index(snap) + 1, timeout=10)
    first.stop(143)
    assert await asyncio.wait_for(run, timeout=10) == 143

    control_plane.auto_ack = True
    mark = len(control_plane.received)
    second = _bridge(config, FakeOpenCode([]))
    run = asyncio.create_task(second.run())
    again = await control_plane.wait_for("snapshot_ready", after=mark, timeout=10)
    assert again["ackId"] == snap["ackId"], "the same event, de-duplicable by ackId"
    await asyncio.sleep(0.6)  # three resend intervals
    assert [e.get("ackId") for e in control_plane.received[mark:] if e["type"] == "snapshot_ready"] == [snap["ackId"]]
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0
    assert len(second.outbox) == 0


async def test_a_silent_env_server_fails_the_prompt_after_the_inactivity_timeout(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    fake = FakeOpenCode(_assistant_turn()[:3])  # busy, then silence
    config = _config(tmp_path, control_plane.url, BRIDGE_PROMPT_INACTIVITY_TIMEOUT="1")
    bridge = _bridge(config, fake)
    run = asyncio.create_task(bridge.run())
    await control_plane.wait_for("ready", timeout=10)
    await control_plane.send({"type": "prompt", "messageId": "m4", "content": "hang"})
    error = await control_plane.wait_for("error", messageId="m4", timeout=10)
    done = await control_plane.wait_for("execution_complete", messageId="m4", timeout=10)
    assert "no progress" in error["error"] and done["success"] is False
    assert fake.aborted == 1
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0


async def test_prompt_options_reach_opencode(tmp_path: Path, control_plane: ControlPlane) -> None:
    """``reasoningEffort`` becomes OpenCode's ``variant``; attachments become file parts after the text."""
    fake = FakeOpenCode(_assistant_turn())

    async def fetch_upload(upload_id: str) -> bytes | None:
        return b"uploaded" if upload_id == "up-1" else None

    config = _config(tmp_path, control_plane.url, opencode_session_id=SID)
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), base_url="http://oc")
    opencode = OpenCodeClient("http://oc", http=http, health=fake.health)
    bridge = Bridge(
        config, opencode=opencode, log=JsonLogger("bridge", stream=io.StringIO()), fetch_upload=fetch_upload
    )
    run = asyncio.create_task(bridge.run())
    await control_plane.wait_for("ready", timeout=10)
    for n, extra in enumerate(
        [
            {"model": "anthropic/claude-sonnet-4-6", "reasoningEffort": "max"},
            {"attachments": [{"name": "a.txt", "mimeType": "text/plain", "content": "aGk="}, {"uploadId": "up-1"}]},
            {"reasoningEffort": None, "attachments": None, "unknownField": {"x": 1}},
        ]
    ):
        await control_plane.send({"type": "prompt", "messageId": f"o{n}", "content": "go", **extra})
        await control_plane.wait_for("execution_complete", messageId=f"o{n}", timeout=10)
    first, second, third = fake.prompts
    assert first["variant"] == "max" and first["parts"] == [{"type": "text", "text": "go"}]
    assert first["model"] == {"providerID": "anthropic", "modelID": "claude-sonnet-4-6"}
    assert "variant" not in second and second["parts"] == [
        {"type": "text", "text": "go"},
        {"type": "file", "mime": "text/plain", "url": "data:text/plain;base64,aGk=", "filename": "a.txt"},
        {"type": "file", "mime": "application/octet-stream", "url": "data:application/octet-stream;base64,dXBsb2FkZWQ=",
         "filename": "attachment"},
    ]  # fmt: skip
    assert "variant" not in third and third["parts"] == [{"type": "text", "text": "go"}]
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0


async def test_events_waiting_in_the_outbox_go_out_under_the_current_sandbox_id(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    """A snapshot's pending events, restored into a sandbox with another id, carry the new id."""
    control_plane.auto_ack = False
    first = _bridge(_config(tmp_path, control_plane.url), FakeOpenCode([]))
    run = asyncio.create_task(first.run())
    await control_plane.wait_for("ready", timeout=10)
    await control_plane.send({"type": "snapshot"})
    snap = await control_plane.wait_for("snapshot_ready", timeout=10)
    first.stop(143)
    await asyncio.wait_for(run, timeout=10)

    control_plane.auto_ack = True
    mark = len(control_plane.received)
    moved = _config(tmp_path, control_plane.url)
    moved = dataclasses.replace(moved, sandbox_id="sbx-restored")
    second = _bridge(moved, FakeOpenCode([]))
    run = asyncio.create_task(second.run())
    again = await control_plane.wait_for("snapshot_ready", after=mark, timeout=10)
    assert again["ackId"] == snap["ackId"] and again["sandboxId"] == "sbx-restored"
    assert control_plane.handshakes[-1]["X-Sandbox-ID"] == "sbx-restored"
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0


async def test_a_prompt_reported_complete_before_a_crash_is_not_reported_again(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    """The bridge died between recording ``execution_complete`` and clearing its in-flight marker."""
    config = _config(tmp_path, control_plane.url)
    outbox = DurableOutbox(config.outbox_file)
    outbox.add(ExecutionCompleteEvent(message_id="m9", success=True).to_wire("sbx-unit"), critical=True, durable=True)
    (config.state_dir / "inflight-prompt.json").write_text(json.dumps({"messageId": "m9"}))
    fake = FakeOpenCode([])
    bridge = _bridge(config, fake)
    run = asyncio.create_task(bridge.run())
    done = await control_plane.wait_for("execution_complete", messageId="m9", timeout=10)
    assert done["success"] is True
    await control_plane.send({"type": "shutdown"})
    assert await asyncio.wait_for(run, timeout=10) == 0
    assert [e["type"] for e in control_plane.received if e.get("messageId") == "m9"] == ["execution_complete"]
    assert fake.aborted == 0 and not (config.state_dir / "inflight-prompt.json").exists()
