"""Repo image builds end to end on real bubblewrap sandboxes, the real git server and OpenCode.

A build clones a repository served over smart HTTP, runs its setup.sh, saves
a repo image (a snapshot-format blob on the local provider) and calls back a
receiver in the test that checks every signature. A session sandbox created
from that image has setup.sh's work without running it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.auth import make_token
from app.client import ApiError
from app.services.builds import BUILD_LABEL
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.callbacks import CALLBACK_SECRET, Receiver, until
from tests.fixtures.runtime import GIT_TOKEN, OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane, GitHttpServer
from tests.support import private_local

USER_SECRET = "sk-user-secret-value-0042"
SETUP = '#!/bin/sh\necho setup-ran >> .setup-count\necho built > .from-setup\necho "installing with key $MY_API_KEY"\n'


def build_settings(make_settings: Callable[..., Settings], workdir: Path, git: GitHttpServer, **extra: Any) -> Settings:
    """A local-provider service that clones from ``git`` and calls back ``callback_receiver`` quickly."""
    values: dict[str, Any] = {
        "provider": "local",
        "data_dir": workdir / "data",
        "allowed_control_plane_hosts": ["127.0.0.1"],
        "vcs_clone_url_template": git.url_template,
        "vcs_clone_token": SecretStr(GIT_TOKEN),
        "internal_callback_secret": SecretStr(CALLBACK_SECRET),
        "callback_retry_base_seconds": 0.05,
        "callback_retry_cap_seconds": 0.2,
        "callback_poll_interval_seconds": 0.2,
        "build_poll_seconds": 0.1,
    }
    return make_settings(**{**values, **extra})


@pytest.fixture
async def build_service(
    make_settings: Callable[..., Settings], provider_workdir: Path, git_server: GitHttpServer, opencode_bin: Path
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Callable[[], dict[str, str]]]]:
    settings = build_settings(
        make_settings, provider_workdir, git_server, local=private_local(opencode_dir=opencode_bin.parent.parent)
    )
    secret = settings.resolved_secrets()[0]
    async with serve_in_process(settings) as (app, raw, client):
        yield app, raw, lambda: {"Authorization": f"Bearer {make_token(secret)}"}
        for sandbox in await client.list_sandboxes():
            with contextlib.suppress(ApiError):  # a pool member may be retired meanwhile
                await client.delete(sandbox["id"])


async def wait_build(
    raw: httpx.AsyncClient, auth: Callable[[], dict[str, str]], build_id: str, timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = (await raw.get(f"/v1/builds/{build_id}", headers=auth())).json()
        if view["status"] not in ("queued", "building"):
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"build {build_id} did not finish: {view}")


async def test_build_callback_then_session_from_the_repo_image(
    build_service: Any, callback_receiver: tuple[Receiver, str], git_server: GitHttpServer, control_plane: ControlPlane
) -> None:
    app, raw, auth = build_service
    calls, base = callback_receiver
    sha = git_server.create_repo("acme", "app", {"README.md": "hi\n", ".openinspect/setup.sh": SETUP})
    body = {
        "repo_owner": "acme",
        "repo_name": "app",
        "build_id": "b-1",
        "callback_url": f"{base}/builds/b-1/complete",
        "user_env_vars": {"MY_API_KEY": USER_SECRET},
    }
    started = time.monotonic()
    answer = await raw.post("/api/build-repo-image", json=body, headers=auth())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "data": {"build_id": "b-1", "status": "building"}}
    assert time.monotonic() - started < 5  # answered before the build ran (it takes seconds)
    again = await raw.post("/api/build-repo-image", json=body, headers=auth())
    assert again.json()["data"]["build_id"] == "b-1"

    await until(lambda: calls.deliveries["build:b-1:ready"] == 1, "the success callback", timeout=120)
    payload = calls.bodies["build:b-1:ready"]
    assert payload["build_id"] == "b-1" and payload["base_sha"] == sha
    assert payload["provider_image_id"].startswith("rimg_")
    assert payload["build_duration_seconds"] > 0
    assert calls.paths == ["/builds/b-1/complete"] and calls.rejected == 0

    view = await wait_build(raw, auth, "b-1")
    assert view["status"] == "ready" and view["provider_image_id"] == payload["provider_image_id"]
    # The build sandbox is gone; one build ran although it was submitted twice.
    services = app.state.services
    assert await services.store.sandboxes.list({BUILD_LABEL: "b-1"}) == []
    assert len(await services.store.builds.list()) == 1

    log = (await raw.get("/v1/builds/b-1/logs", headers=auth())).text
    assert "build.complete" in log and "installing with key" in log
    assert USER_SECRET not in log and GIT_TOKEN not in log

    latest = (await raw.get("/api/snapshot", params={"repo_owner": "acme", "repo_name": "app"}, headers=auth())).json()
    assert latest["data"]["id"] == latest["data"]["provider_image_id"] == payload["provider_image_id"]
    assert latest["data"]["base_sha"] == sha and latest["data"]["status"] == "ready"
    assert datetime.fromisoformat(latest["data"]["created_at"]).tzinfo is not None  # the reference's ISO-8601 string
    assert 0 < latest["data"]["build_duration_seconds"] <= payload["build_duration_seconds"] + 5
    none = await raw.get("/api/snapshot", params={"repo_owner": "acme", "repo_name": "other"}, headers=auth())
    assert none.json() == {"success": True, "data": None}

    # A new commit after the build: the repo image sandbox fetches it, setup.sh does not run again.
    newer = git_server.commit("acme", "app", {"NEW.md": "after the build\n"})
    created = await raw.post(
        "/api/create-sandbox",
        json={
            "session_id": "sess-img",
            "repo_owner": "acme",
            "repo_name": "app",
            "control_plane_url": control_plane.url,
            "sandbox_auth_token": SANDBOX_TOKEN,
            "user_env_vars": dict(OPENCODE_OFFLINE),
            "repo_image_id": payload["provider_image_id"],
            "repo_image_sha": sha,
        },
        headers=auth(),
    )
    assert created.status_code == 200, created.text
    sandbox_id = created.json()["data"]["sandbox_id"]
    await control_plane.wait_for("ready", timeout=90)
    check = await raw.post(
        f"/v1/sandboxes/{sandbox_id}/exec",
        json={
            "command": "cd /workspace/app && cat .setup-count .from-setup NEW.md && git rev-parse HEAD "
            "&& cat .git/config && env | grep -c BOOT_MODE=repo_image"
        },
        headers=auth(),
    )
    output = check.json()["stdout"]
    assert output.count("setup-ran") == 1 and "built" in output and "after the build" in output
    assert newer in output
    assert GIT_TOKEN not in output and USER_SECRET not in output

    image_id = payload["provider_image_id"]
    gone = await raw.post("/api/delete-provider-image", json={"provider_image_id": image_id}, headers=auth())
    assert gone.json()["data"] == {"provider_image_id": image_id, "deleted": True}
    twice = await raw.post("/api/delete-provider-image", json={"provider_image_id": image_id}, headers=auth())
    assert twice.json()["data"]["deleted"] is False
    after = await raw.get("/api/snapshot", params={"repo_owner": "acme", "repo_name": "app"}, headers=auth())
    assert after.json()["data"] is None


async def test_failing_setup_calls_back_build_failed_with_the_error_tail(
    build_service: Any, callback_receiver: tuple[Receiver, str], git_server: GitHttpServer
) -> None:
    _app, raw, auth = build_service
    calls, base = callback_receiver
    git_server.create_repo(
        "acme",
        "broken",
        {".openinspect/setup.sh": "#!/bin/sh\necho compiling\necho 'error: libfoo missing' >&2\nexit 3\n"},
    )
    answer = await raw.post(
        "/v1/builds",
        json={"build_id": "b-2", "repo": {"owner": "acme", "name": "broken"}, "callback_url": f"{base}/cb/b-2/done"},
        headers=auth(),
    )
    assert answer.status_code == 202, answer.text
    await until(lambda: calls.deliveries["build:b-2:failed"] == 1, "the failure callback", timeout=120)
    payload = calls.bodies["build:b-2:failed"]
    assert payload["build_id"] == "b-2" and "libfoo missing" in payload["error"]
    assert calls.paths == ["/cb/b-2/build-failed"]
    view = await wait_build(raw, auth, "b-2")
    assert view["status"] == "failed" and "libfoo missing" in view["error"]
    assert view["provider_image_id"] is None


async def test_logs_while_running_and_cancel(build_service: Any, git_server: GitHttpServer) -> None:
    app, raw, auth = build_service
    git_server.create_repo(
        "acme", "slow", {".openinspect/setup.sh": "#!/bin/sh\necho step-one\nsleep 60\necho never-here\n"}
    )
    answer = await raw.post(
        "/v1/builds", json={"build_id": "b-3", "repo": {"owner": "acme", "name": "slow"}}, headers=auth()
    )
    assert answer.status_code == 202
    # The log is readable while the build runs (SSE following is tested on a live server).
    deadline = time.monotonic() + 60
    while "step-one" not in (await raw.get("/v1/builds/b-3/logs", headers=auth())).text:
        assert time.monotonic() < deadline, "setup.sh's output never reached the build log"
        await asyncio.sleep(0.2)
    cancelled = await raw.post("/v1/builds/b-3/cancel", headers=auth())
    assert cancelled.json()["status"] == "cancelled"
    assert await app.state.services.store.sandboxes.list({BUILD_LABEL: "b-3"}) == []
    # A finished build's SSE stream replays the log and ends with the final status.
    async with raw.stream("GET", "/v1/builds/b-3/logs", headers={**auth(), "Accept": "text/event-stream"}) as stream:
        text = "".join([chunk async for chunk in stream.aiter_text()])
    assert "step-one" in text and "event: end" in text and '"status":"cancelled"' in text
    assert "never-here" not in text


async def test_build_input_is_checked_before_anything_runs(build_service: Any) -> None:
    _app, raw, auth = build_service
    outside = await raw.post(
        "/api/build-repo-image",
        json={"repo_owner": "a", "repo_name": "b", "build_id": "x1", "callback_url": "http://example.invalid/cb"},
        headers=auth(),
    )
    assert outside.status_code == 400 and outside.json()["code"] == "host_not_allowed"
    reserved = await raw.post(
        "/v1/builds",
        json={"build_id": "x2", "repo": {"owner": "a", "name": "b"}, "env": {"SANDBOX_AUTH_TOKEN": "x"}},
        headers=auth(),
    )
    assert reserved.status_code == 422 and reserved.json()["code"] == "reserved_env_name"
    bad_id = await raw.post(
        "/v1/builds", json={"build_id": "../x", "repo": {"owner": "a", "name": "b"}}, headers=auth()
    )
    assert bad_id.status_code == 422
    unknown = await raw.get("/v1/builds/nope", headers=auth())
    assert unknown.status_code == 404 and unknown.json()["code"] == "build_not_found"
    # Deleting is idempotent for the control plane: an id that is not ours is simply not held here.
    foreign = await raw.post("/api/delete-provider-image", json={"provider_image_id": "ubuntu:22.04"}, headers=auth())
    assert foreign.json() == {"success": True, "data": {"provider_image_id": "ubuntu:22.04", "deleted": False}}
    missing = await raw.post(
        "/api/delete-provider-image", json={"provider_image_id": "rimg_0123456789abcdef"}, headers=auth()
    )
    assert missing.json() == {"success": True, "data": {"provider_image_id": "rimg_0123456789abcdef", "deleted": False}}
    no_image = await raw.post(
        "/api/create-sandbox",
        json={
            "session_id": "s",
            "repo_owner": "a",
            "repo_name": "b",
            "control_plane_url": "http://127.0.0.1:1/",
            "sandbox_auth_token": "t",
            "repo_image_id": "rimg_0123456789abcdef",
        },
        headers=auth(),
    )
    assert no_image.status_code == 404 and no_image.json()["code"] == "repo_image_not_found"
    assert await _app.state.services.store.builds.list() == []


@pytest.mark.s3
async def test_storage_down_when_the_image_is_saved_fails_the_build_cleanly(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    callback_receiver: tuple[Receiver, str],
    s3_server: Any,
    s3_bucket: str,
) -> None:
    """S3 is down when the repo image's blob is written: failed build, no sandbox, no image, a failure callback."""
    calls, base = callback_receiver
    settings = build_settings(
        make_settings,
        provider_workdir,
        git_server,
        s3_endpoint=s3_server.endpoint,
        s3_bucket=s3_bucket,
        s3_access_key=SecretStr(s3_server.access_key),
        s3_secret_key=SecretStr(s3_server.secret_key),
        s3_region=s3_server.region,
    )
    git_server.create_repo("acme", "s3", {".openinspect/setup.sh": "#!/bin/sh\necho started\nsleep 3\n"})
    secret = settings.resolved_secrets()[0]
    auth = {"Authorization": f"Bearer {make_token(secret)}"}
    async with serve_in_process(settings) as (app, raw, _client):
        await raw.post(
            "/v1/builds",
            json={"build_id": "s3-1", "repo": {"owner": "acme", "name": "s3"}, "callback_url": f"{base}/x/s3-1/ok"},
            headers=auth,
        )
        deadline = time.monotonic() + 60
        while "started" not in (await raw.get("/v1/builds/s3-1/logs", headers=auth)).text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        s3_server.stop()
        try:
            await until(lambda: calls.deliveries["build:s3-1:failed"] == 1, "the failure callback", timeout=120)
            view = (await raw.get("/v1/builds/s3-1", headers=auth)).json()
            assert view["status"] == "failed" and view["provider_image_id"] is None
            services = app.state.services
            assert await services.store.sandboxes.list({BUILD_LABEL: "s3-1"}) == []
            assert await services.store.repo_images.latest("acme", "s3", "local") is None
            assert calls.deliveries["build:s3-1:ready"] == 0
        finally:
            s3_server.start()
            await asyncio.to_thread(s3_server.client().create_bucket, Bucket=s3_bucket)


async def test_a_pool_of_a_repo_image_is_claimed_by_sessions_of_that_image(
    build_service: Any, git_server: GitHttpServer, control_plane: ControlPlane
) -> None:
    app, raw, auth = build_service
    git_server.create_repo("acme", "pooled", {".openinspect/setup.sh": SETUP})
    await raw.post("/v1/builds", json={"build_id": "p-1", "repo": {"owner": "acme", "name": "pooled"}}, headers=auth())
    image_id = (await wait_build(raw, auth, "p-1"))["provider_image_id"]
    assert image_id
    both = await raw.put(
        "/v1/pools/img",
        json={"repo": {"owner": "acme", "name": "pooled"}, "image": "x", "repo_image_id": image_id, "target": 1},
        headers=auth(),
    )
    assert both.status_code == 422
    wrong_repo = await raw.put(
        "/v1/pools/img",
        json={"repo": {"owner": "acme", "name": "other"}, "repo_image_id": image_id, "target": 1},
        headers=auth(),
    )
    assert wrong_repo.status_code == 400
    put = await raw.put(
        "/v1/pools/img",
        json={"repo": {"owner": "acme", "name": "pooled"}, "repo_image_id": image_id, "target": 1},
        headers=auth(),
    )
    assert put.status_code == 200 and put.json()["repo_image_id"] == image_id
    deadline = time.monotonic() + 90
    while (await raw.get("/v1/pools/img", headers=auth())).json()["ready"] != 1:
        assert time.monotonic() < deadline, "the repo image pool never got a ready member"
        await asyncio.sleep(0.25)
    member = (await app.state.services.pools.maintainer.members("img"))[0]

    created = await raw.post(
        "/api/create-sandbox",
        json={
            "session_id": "sess-pool",
            "repo_owner": "acme",
            "repo_name": "pooled",
            "control_plane_url": control_plane.url,
            "sandbox_auth_token": SANDBOX_TOKEN,
            "repo_image_id": image_id,
        },
        headers=auth(),
    )
    assert created.status_code == 200, created.text
    assert created.json()["data"]["sandbox_id"] == member.id  # the warm member, not a cold create
    await control_plane.wait_for("ready", timeout=90)
    check = await raw.post(
        f"/v1/sandboxes/{member.id}/exec", json={"command": "cat /workspace/pooled/.setup-count"}, headers=auth()
    )
    assert check.json()["stdout"].count("setup-ran") == 1
    assert (await raw.delete("/v1/pools/img", headers=auth())).status_code == 200


async def test_a_build_past_its_timeout_fails_and_its_sandbox_goes(
    make_settings: Callable[..., Settings],
    provider_workdir: Path,
    git_server: GitHttpServer,
    callback_receiver: tuple[Receiver, str],
) -> None:
    calls, base = callback_receiver
    settings = build_settings(make_settings, provider_workdir, git_server, build_timeout_seconds=10)
    git_server.create_repo("acme", "stuck", {".openinspect/setup.sh": "#!/bin/sh\necho waiting\nsleep 120\n"})
    auth = {"Authorization": f"Bearer {make_token(settings.resolved_secrets()[0])}"}
    async with serve_in_process(settings) as (app, raw, _client):
        await raw.post(
            "/v1/builds",
            json={"build_id": "t-1", "repo": {"owner": "acme", "name": "stuck"}, "callback_url": f"{base}/t/t-1/ok"},
            headers=auth,
        )
        await until(lambda: calls.deliveries["build:t-1:failed"] == 1, "the timeout's failure callback", timeout=60)
        assert "timed out after 10 s" in calls.bodies["build:t-1:failed"]["error"]
        view = (await raw.get("/v1/builds/t-1", headers=auth)).json()
        assert view["status"] == "failed"
        assert await app.state.services.store.sandboxes.list({BUILD_LABEL: "t-1"}) == []
