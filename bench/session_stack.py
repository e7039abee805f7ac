"""The stack the session benchmarks share: a git server, a WebSocket control plane
and a real ``sandboxctl serve`` (local provider, real OpenCode), all on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import SandboxClient  # noqa: E402
from tests.fixtures.app import LiveServer, free_port  # noqa: E402
from tests.fixtures.runtime import (  # noqa: E402
    GIT_TOKEN,
    OPENCODE_OFFLINE,
    SANDBOX_TOKEN,
    ControlPlane,
    GitHttpServer,
    find_opencode,
)


@dataclass
class SessionStack:
    client: SandboxClient
    plane: ControlPlane
    workdir: Path
    opencode: Path


@asynccontextmanager
async def session_stack(prefix: str, setup_script: str, **env: str) -> AsyncIterator[SessionStack]:
    """Serve repo ``acme/app`` (with ``setup_script`` as setup.sh) and a service pointed at it."""
    binary = find_opencode()
    if binary is None:
        raise SystemExit("OpenCode is not installed: run scripts/install-opencode.sh")
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o711)  # local sandboxes (own uids) traverse it
    git = GitHttpServer(workdir / "git").start()
    git.create_repo("acme", "app", {"README.md": "bench\n", ".openinspect/setup.sh": setup_script})
    plane = await ControlPlane().start()
    secret = secrets.token_hex(32)
    full: dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
    full.update(
        SANDBOX_API_SECRET=secret,
        SANDBOX_PROVIDER="local",
        SANDBOX_DATA_DIR=str(workdir / "data"),
        SANDBOX_LOG_LEVEL="warning",
        ALLOWED_CONTROL_PLANE_HOSTS="127.0.0.1",
        VCS_CLONE_URL_TEMPLATE=git.url_template,
        SANDBOX_VCS_CLONE_TOKEN=GIT_TOKEN,
        SANDBOX_LOCAL_OPENCODE_DIR=str(binary.parent.parent),
        **env,
    )
    server = LiveServer(full, free_port(), workdir / "server.log")
    server.start()
    try:
        async with SandboxClient(server.url, secret.encode()) as client:
            yield SessionStack(client, plane, workdir, binary)
    finally:
        server.stop()
        await plane.stop()
        git.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def session_to_ready(
    client: SandboxClient, plane: ControlPlane, session_id: str, user_env: Mapping[str, str] = OPENCODE_OFFLINE
) -> tuple[float, dict[str, Any]]:
    """``POST /api/create-sandbox`` for ``acme/app``; seconds until ``ready`` arrives, and the answer's data."""
    before = len(plane.received)
    body: dict[str, Any] = {
        "session_id": session_id,
        "repo_owner": "acme",
        "repo_name": "app",
        "control_plane_url": plane.url,
        "sandbox_auth_token": SANDBOX_TOKEN,
    }
    if user_env:
        body["user_env_vars"] = dict(user_env)
    started = time.perf_counter()
    created: dict[str, Any] = (await client.request("POST", "/api/create-sandbox", json=body))["data"]
    await plane.wait_for("ready", timeout=180, after=before, sandboxId=created["sandbox_id"])
    return time.perf_counter() - started, created


def print_table(rows: Mapping[str, list[float]]) -> None:
    """p50, min and max of each row, in seconds."""
    width = max(len(name) for name in rows)
    print(f"| {'measure (s)':<{width}} |    p50 |    min |    max |")
    print(f"|{'-' * (width + 2)}|--------|--------|--------|")
    for name, values in rows.items():
        print(f"| {name:<{width}} | {statistics.median(values):6.2f} | {min(values):6.2f} | {max(values):6.2f} |")
