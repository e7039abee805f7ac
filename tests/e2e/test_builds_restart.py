"""Builds survive the service: killed (SIGKILL) mid-build and mid-callback, nothing is lost.

The service runs as a real process (``sandboxctl serve``) on the local
provider; the callback receiver and the git server run in the test. Each
scenario kills the service at a chosen moment, starts a new one on the same
data dir and checks that the build finishes and every callback arrives.
Also here: following a running build's log as server-sent events over a real
HTTP connection (the in-process transport would buffer the stream).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.auth import make_token
from tests.fixtures.app import LiveServer
from tests.fixtures.callbacks import CALLBACK_SECRET, Receiver, until
from tests.fixtures.runtime import GIT_TOKEN, GitHttpServer


@pytest.fixture
def start_service(live_server_factory: Callable[..., LiveServer], git_server: GitHttpServer) -> Callable[[], Any]:
    """Start a service process on the shared data dir; returns (server, auth headers factory)."""
    secret = secrets.token_hex(32)

    async def start() -> tuple[LiveServer, Callable[[], dict[str, str]]]:
        server = live_server_factory(
            secret,
            VCS_CLONE_URL_TEMPLATE=git_server.url_template,
            SANDBOX_VCS_CLONE_TOKEN=GIT_TOKEN,
            ALLOWED_CONTROL_PLANE_HOSTS="127.0.0.1",
            INTERNAL_CALLBACK_SECRET=CALLBACK_SECRET,
            SANDBOX_CALLBACK_RETRY_BASE="0.05",
            SANDBOX_CALLBACK_RETRY_CAP="0.3",
            SANDBOX_CALLBACK_POLL_INTERVAL="0.2",
            SANDBOX_BUILD_POLL_INTERVAL="0.1",
        )
        await asyncio.to_thread(server.start, 60.0)
        return server, lambda: {"Authorization": f"Bearer {make_token(secret.encode())}"}

    return start


async def build_view(client: httpx.AsyncClient, auth: Callable[[], dict[str, str]], build_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/builds/{build_id}", headers=auth())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for(
    client: httpx.AsyncClient,
    auth: Callable[[], dict[str, str]],
    build_id: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = await build_view(client, auth, build_id)
        if check(view):
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"build {build_id} never got there: {view}")


async def test_killed_mid_build_the_next_service_finishes_it(
    start_service: Callable[[], Any], callback_receiver: tuple[Receiver, str], git_server: GitHttpServer
) -> None:
    calls, base = callback_receiver
    sha = git_server.create_repo(
        "acme", "app", {".openinspect/setup.sh": "#!/bin/sh\necho phase-one\nsleep 5\necho ok > .marker\n"}
    )
    first, auth = await start_service()
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        answer = await client.post(
            "/api/build-repo-image",
            json={"repo_owner": "acme", "repo_name": "app", "build_id": "r-1", "callback_url": f"{base}/b/r-1/ok"},
            headers=auth(),
        )
        assert answer.json()["data"]["status"] == "building"
        running = await wait_for(client, auth, "r-1", lambda v: v["status"] == "building" and v["log_bytes"] > 0)
        assert running["sandbox_id"]
    first.kill()

    second, auth2 = await start_service()
    await until(lambda: calls.deliveries["build:r-1:ready"] >= 1, "the success callback after the restart", 120)
    payload = calls.bodies["build:r-1:ready"]
    assert payload["base_sha"] == sha and payload["provider_image_id"].startswith("rimg_")
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        done = await wait_for(client, auth2, "r-1", lambda v: v["status"] == "ready")
        assert done["provider_image_id"] == payload["provider_image_id"]
        log = (await client.get("/v1/builds/r-1/logs", headers=auth2())).text
        # The log was resumed from the recorded offset: nothing lost, nothing twice.
        assert log.count("phase-one") == 1 and "build.complete" in log
        left = (await client.get("/v1/sandboxes", headers=auth2())).json()
        assert left["sandboxes"] == []
    assert calls.deliveries["build:r-1:ready"] == 1 and calls.rejected == 0


async def test_killed_mid_callback_the_callback_is_still_delivered(
    start_service: Callable[[], Any], callback_receiver: tuple[Receiver, str], git_server: GitHttpServer
) -> None:
    calls, base = callback_receiver
    calls.fail_times = 10**6  # the control plane is having a bad time: 500 to everything
    git_server.create_repo("acme", "lib", {".openinspect/setup.sh": "#!/bin/sh\necho fine\n"})
    first, auth = await start_service()
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        await client.post(
            "/api/build-repo-image",
            json={"repo_owner": "acme", "repo_name": "lib", "build_id": "r-2", "callback_url": f"{base}/b/r-2/ok"},
            headers=auth(),
        )
        await until(lambda: calls.attempts["build:r-2:ready"] >= 3, "three failed deliveries", 120)
    first.kill()
    assert calls.deliveries["build:r-2:ready"] == 0
    calls.fail_times = 0  # the control plane recovers while the service is down

    second, auth2 = await start_service()
    await until(lambda: calls.deliveries["build:r-2:ready"] >= 1, "the callback after the restart", 60)
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        view = await wait_for(client, auth2, "r-2", lambda v: v["status"] == "ready")
    assert calls.bodies["build:r-2:ready"]["provider_image_id"] == view["provider_image_id"]
    assert calls.deliveries["build:r-2:ready"] == 1 and calls.rejected == 0


async def test_follow_a_running_build_as_server_sent_events(
    start_service: Callable[[], Any], git_server: GitHttpServer
) -> None:
    git_server.create_repo(
        "acme", "slow", {".openinspect/setup.sh": "#!/bin/sh\necho first-line\nsleep 2\necho second-line\nsleep 60\n"}
    )
    server, auth = await start_service()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        answer = await client.post(
            "/v1/builds", json={"build_id": "r-3", "repo": {"owner": "acme", "name": "slow"}}, headers=auth()
        )
        assert answer.status_code == 202
        events: list[str] = []
        cancelled_at: int | None = None
        async with asyncio.timeout(60):
            async with client.stream("GET", "/v1/builds/r-3/logs?follow=true", headers=auth()) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    events.append(line)
                    text = "\n".join(events)
                    if cancelled_at is None and "second-line" in text:
                        # Both lines arrived while the build still runs: it is followed, not replayed.
                        assert (await build_view(client, auth, "r-3"))["status"] == "building"
                        cancelled = await client.post("/v1/builds/r-3/cancel", headers=auth())
                        assert cancelled.json()["status"] == "cancelled"
                        cancelled_at = len(events)
                    if line.startswith("event: end"):
                        break
        text = "\n".join(events)
        assert text.index("first-line") < text.index("second-line") < text.index("event: end")
        assert "id: 1" in text
        # Reconnecting with Last-Event-ID replays only what came after.
        headers = {**auth(), "Last-Event-ID": "1", "Accept": "text/event-stream"}
        replay = (await client.get("/v1/builds/r-3/logs", headers=headers)).text
        assert "id: 1\n" not in replay and "event: end" in replay
