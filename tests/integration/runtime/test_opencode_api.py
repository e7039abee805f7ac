"""The runtime's calls against a real ``opencode serve`` (no model is reachable: requests are
checked for being taken, not answered): basic auth, prompt options, the provider catalogue
and the auth API a claim's keys go through."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_runtime import serverauth
from sandbox_runtime.bridge.opencode import ModelRef, OpenCodeClient
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.envserver import EnvServerApi
from sandbox_runtime.health import LoopbackRequest
from sandbox_runtime.sandbox_env import build_sandbox_env
from sandbox_runtime.serverauth import ServerCredentials
from tests.fixtures.runtime import free_port, git, opencode_env


def _png() -> str:
    """A valid 1x1 PNG, base64 (OpenCode decodes images and fails a prompt whose image it cannot)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\xff\0\0"))
    return base64.b64encode(png + chunk(b"IEND", b"")).decode()


PNG = _png()


@dataclass
class Served:
    url: str
    credentials: ServerCredentials
    config: RuntimeConfig


@pytest.fixture
async def opencode(tmp_path: Path, opencode_bin: Path) -> AsyncIterator[Served]:
    """``opencode serve`` on a free port of a git checkout, with a password made by the runtime's code."""
    repo = tmp_path / "ws" / "widget"
    repo.mkdir(parents=True)
    git("init", "-q", str(repo))
    (repo / "README.md").write_text("hi\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "init", cwd=repo)
    port = free_port()
    env = build_sandbox_env(
        sandbox_id="sbx-api",
        repo_owner="acme",
        repo_name="widget",
        workspace_dir=str(tmp_path / "ws"),
        env_server_port=port,
        runtime_overrides={"RUNTIME_RUN_DIR": str(tmp_path / "run")},
    )
    config = RuntimeConfig.from_env(env)
    credentials = serverauth.create(config.run_dir)
    server_env = {
        "PATH": os.environ["PATH"],
        "XDG_DATA_HOME": str(tmp_path / "data"),
        **opencode_env(tmp_path / "home"),
        **credentials.server_env(),
    }
    proc = subprocess.Popen(
        [str(opencode_bin), "serve", "--port", str(port), "--hostname", "127.0.0.1"],
        cwd=repo, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield Served(f"http://127.0.0.1:{port}", credentials, config)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def test_prompts_with_options_and_attachments_are_accepted(opencode: Served) -> None:
    client = OpenCodeClient(opencode.url, headers=opencode.credentials.headers)
    try:
        await client.wait_healthy(60)
        assert await LoopbackRequest(opencode.url + "/global/health").status(5) == 401, "no password, no answer"
        session_id = await client.create_session("options")
        files = [
            {"type": "file", "mime": "image/png", "url": f"data:image/png;base64,{PNG}", "filename": "shot.png"},
            {"type": "file", "mime": "text/plain", "url": "data:text/plain;base64,aGVsbG8=", "filename": "n.txt"},
            {"type": "file", "mime": "application/pdf", "url": "https://example.com/s.pdf", "filename": "s.pdf"},
        ]
        model = ModelRef("anthropic", "claude-sonnet-4-6")
        await client.prompt_async(session_id, "Look at these.", model, variant="high", files=files)

        # Taken: the prompt becomes the session's user message (stored just after the 204).
        async with httpx.AsyncClient(base_url=opencode.url, headers=opencode.credentials.headers) as http:
            users: list[dict[str, Any]] = []
            for _ in range(100):  # bounded
                messages = (await http.get(f"/session/{session_id}/message", timeout=10)).json()
                users = [m for m in messages if m["info"]["role"] == "user"]
                if users:
                    break
                await asyncio.sleep(0.1)
        await client.abort(session_id)
        user = users[0]
        assert user["info"]["model"] == {"providerID": "anthropic", "modelID": "claude-sonnet-4-6", "variant": "high"}
        stored = [(p.get("mime"), p.get("filename")) for p in user["parts"] if p["type"] == "file"]
        assert stored == [("image/png", "shot.png"), ("text/plain", "n.txt"), ("application/pdf", "s.pdf")]
    finally:
        await client.aclose()


async def test_a_claims_provider_keys_go_through_the_auth_api(opencode: Served) -> None:
    api = EnvServerApi(opencode.config, opencode.credentials)
    client = OpenCodeClient(opencode.url, headers=opencode.credentials.headers)
    try:
        await client.wait_healthy(60)
    finally:
        await client.aclose()
    assert await api.warm_up() == 200
    catalogue = await api.provider_catalogue()
    assert catalogue is not None and catalogue.env_names["anthropic"] == ("ANTHROPIC_API_KEY",)
    assert await api.set_provider_keys({"anthropic": "sk-ant-test-0123456789"}) == []

    async with httpx.AsyncClient(base_url=opencode.url, headers=opencode.credentials.headers) as http:
        for _ in range(50):  # taken at once; bounded all the same
            connected = (await http.get("/provider", timeout=30)).json()["connected"]
            if "anthropic" in connected:
                break
            await asyncio.sleep(0.1)
    assert "anthropic" in connected
