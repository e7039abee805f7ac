"""Repo image builds end to end on the docker provider, with the sandbox image from Dockerfile.sandbox.

A build clones a repository from the test git server (host networking: the
container reaches 127.0.0.1), runs its setup.sh and commits the container as
``sandbox-control-repo-image:<rimg id>``; a receiver in the test checks the
signed success callback. The committed image keeps neither the build's
secrets nor our per-container labels, in its config or on its disk. A
session sandbox created from it has setup.sh's work without running it
again, and its bridge says ``ready``; deleting the image removes it from the
engine, once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from app.auth import make_token
from app.client import SandboxClient
from app.provider_settings import DockerSettings
from app.providers.docker import REPO_IMAGE_LABEL
from app.services.builds import BUILD_LABEL
from app.services.repo_images import NATIVE_IMAGE_REPOSITORY
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.callbacks import CALLBACK_SECRET, Receiver, until
from tests.fixtures.docker import DockerEngine
from tests.fixtures.runtime import GIT_TOKEN, OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane, GitHttpServer

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(300)]

USER_SECRET = "sk-user-secret-value-d0c4e7"
SETUP = (
    "#!/bin/sh\nset -e\n"
    "echo setup-ran >> .setup-count\n"
    "echo built-in-docker > .from-setup\n"
    'echo "installing with key $MY_API_KEY"\n'
)
#: Where a build writes: everything else in the image is the sandbox image's.
WRITABLE_DIRS = "/workspace /tmp /home /var/tmp"


class DockerBuildService:
    """An in-process service on the docker provider, called as a control plane would."""

    def __init__(self, app: Any, raw: httpx.AsyncClient, client: SandboxClient, secret: bytes) -> None:
        self.app = app
        self.raw = raw
        self.client = client
        self.secret = secret

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(self.secret)}"}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self.raw.post(path, json=body, headers=self.auth())
        assert answer.status_code == 200, answer.text
        payload: dict[str, Any] = answer.json()
        assert payload["success"] is True, payload
        return payload

    async def wait_build(self, build_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = (await self.raw.get(f"/v1/builds/{build_id}", headers=self.auth())).json()
            if view["status"] not in ("queued", "building"):
                return view
            await asyncio.sleep(0.2)
        raise AssertionError(f"build {build_id} did not finish: {view}")


@pytest.fixture
async def docker_builds(
    make_settings: Callable[..., Settings], sandbox_image: str, git_server: GitHttpServer
) -> AsyncIterator[DockerBuildService]:
    settings = make_settings(
        provider="docker",
        base_image=sandbox_image,
        # The git server, control plane and receiver listen on 127.0.0.1.
        docker=DockerSettings(network="host", pull="never"),
        instance_scope_override=f"test-{uuid.uuid4().hex[:12]}",
        allowed_control_plane_hosts=["127.0.0.1"],
        vcs_clone_url_template=git_server.url_template,
        vcs_clone_token=SecretStr(GIT_TOKEN),
        internal_callback_secret=SecretStr(CALLBACK_SECRET),
        callback_retry_base_seconds=0.05,
        callback_retry_cap_seconds=0.2,
        callback_poll_interval_seconds=0.2,
        build_poll_seconds=0.2,
        build_timeout_seconds=240,
    )
    async with serve_in_process(settings) as (app, raw, client):
        service = DockerBuildService(app, raw, client, settings.resolved_secrets()[0])
        try:
            yield service
        finally:
            for sandbox in await client.list_sandboxes():
                await client.delete(sandbox["id"])
            services = app.state.services
            for build in await services.store.builds.list():  # a failed test's images; a passing one deleted them
                if build.repo_image_id:
                    await services.repo_images.delete(build.repo_image_id)


async def image_inspect(engine: DockerEngine, image: str) -> tuple[int, Any]:
    return await asyncio.to_thread(engine.get, f"/images/{quote(image, safe='')}/json")


async def test_build_commits_an_image_that_boots_a_session_then_is_deleted(
    docker_builds: DockerBuildService,
    docker_engine: DockerEngine,
    sandbox_image: str,
    callback_receiver: tuple[Receiver, str],
    git_server: GitHttpServer,
    control_plane: ControlPlane,
) -> None:
    service = docker_builds
    calls, base = callback_receiver
    sha = git_server.create_repo("acme", "app", {"README.md": "hi\n", ".openinspect/setup.sh": SETUP})
    answer = await service.post(
        "/api/build-repo-image",
        {
            "repo_owner": "acme",
            "repo_name": "app",
            "build_id": "bd-1",
            "callback_url": f"{base}/builds/bd-1/complete",
            "user_env_vars": {"MY_API_KEY": USER_SECRET},
        },
    )
    assert answer["data"] == {"build_id": "bd-1", "status": "building"}

    # -- the success callback ---------------------------------------------------------------
    await until(lambda: calls.deliveries["build:bd-1:ready"] == 1, "the success callback", timeout=180)
    payload = calls.bodies["build:bd-1:ready"]
    image_id = payload["provider_image_id"]
    assert payload["build_id"] == "bd-1" and payload["base_sha"] == sha
    assert image_id.startswith("rimg_") and payload["build_duration_seconds"] > 0
    assert calls.paths == ["/builds/bd-1/complete"] and calls.rejected == 0
    native = f"{NATIVE_IMAGE_REPOSITORY}:{image_id}"
    view = await service.wait_build("bd-1")
    assert view["status"] == "ready" and view["provider_image_id"] == image_id
    assert await service.app.state.services.store.sandboxes.list({BUILD_LABEL: "bd-1"}) == []
    log = (await service.raw.get("/v1/builds/bd-1/logs", headers=service.auth())).text
    assert "installing with key" in log and USER_SECRET not in log and GIT_TOKEN not in log

    # -- the committed image: the base image's config, none of the build's ----------------------
    status, image = await image_inspect(docker_engine, native)
    assert status == 200, image
    status, base_image = await image_inspect(docker_engine, sandbox_image)
    assert status == 200
    config, base_config = image["Config"], base_image["Config"]
    flat = json.dumps(config)
    for secret in (GIT_TOKEN, USER_SECRET, "bd-1"):
        assert secret not in flat, f"{secret!r} is in the image config: {flat}"
    # Names the build set are left unset (no `=`); every value is the base image's.
    assert {entry for entry in config["Env"] if "=" in entry} == set(base_config["Env"])
    valued = {key: value for key, value in (config["Labels"] or {}).items() if value}
    assert valued == {**base_config["Labels"], REPO_IMAGE_LABEL: native}
    assert config["Cmd"] == base_config["Cmd"] and config["User"] == base_config["User"]

    # -- and on its disk: a plain container from it, no network -------------------------------
    plain = await service.client.create(image=native, network="none", ttl_seconds=300)
    found = await service.client.exec(
        plain["id"],
        f"grep -rIl -e {GIT_TOKEN} -e {USER_SECRET} {WRITABLE_DIRS} 2>/dev/null; "
        "ls -d /tmp/sandbox-runtime /tmp/sandbox-build 2>/dev/null; "
        "cat /workspace/app/.setup-count; echo MY_API_KEY=${MY_API_KEY-unset}",
        timeout_seconds=60,
    )
    assert found["stdout"] == "setup-ran\nMY_API_KEY=unset\n", found
    await service.client.delete(plain["id"])

    # -- a session from the image: setup.sh's work is there, it does not run again --------------
    newer = git_server.commit("acme", "app", {"NEW.md": "after the build\n"})
    created = await service.post(
        "/api/create-sandbox",
        {
            "session_id": "sess-docker-img",
            "repo_owner": "acme",
            "repo_name": "app",
            "control_plane_url": control_plane.url,
            "sandbox_auth_token": SANDBOX_TOKEN,
            "user_env_vars": dict(OPENCODE_OFFLINE),
            "repo_image_id": image_id,
        },
    )
    sandbox_id = created["data"]["sandbox_id"]
    assert (await service.client.get(sandbox_id))["image"] == native
    ready = await control_plane.wait_for("ready", timeout=120)
    assert ready["sandboxId"] == sandbox_id
    check = await service.client.exec(
        sandbox_id,
        "cd /workspace/app && cat .setup-count .from-setup NEW.md && git rev-parse HEAD "
        "&& env | grep -c '^BOOT_MODE=repo_image$'",
        timeout_seconds=60,
    )
    output = check["stdout"]
    assert check["exit_code"] == 0, check
    assert output.count("setup-ran") == 1 and "built-in-docker" in output and "after the build" in output
    assert newer in output and USER_SECRET not in output

    # -- delete: gone from the engine, once ----------------------------------------------------
    # The session goes first: an image still used by a container is only untagged by the engine.
    await service.client.delete(sandbox_id)
    gone = await service.post("/api/delete-provider-image", {"provider_image_id": image_id})
    assert gone["data"] == {"provider_image_id": image_id, "deleted": True}
    assert (await image_inspect(docker_engine, native))[0] == 404
    assert (await image_inspect(docker_engine, image["Id"]))[0] == 404
    twice = await service.post("/api/delete-provider-image", {"provider_image_id": image_id})
    assert twice["data"] == {"provider_image_id": image_id, "deleted": False}
    latest = await service.raw.get(
        "/api/snapshot", params={"repo_owner": "acme", "repo_name": "app"}, headers=service.auth()
    )
    assert latest.json() == {"success": True, "data": None}
