"""The sandbox image boots the supervisor under the docker provider, end to end.

A container from Dockerfile.sandbox runs ``python -m sandbox_runtime`` as its
entry command: it clones a repository from a git server on 127.0.0.1, starts
OpenCode, and its bridge says ``ready`` to a control plane on 127.0.0.1
(host networking). Then ``stop`` ends it gracefully and ``start`` boots it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.providers.docker import DockerProvider
from sandbox_runtime.contract import SessionConfig
from sandbox_runtime.sandbox_env import build_sandbox_env
from tests.fixtures.runtime import GIT_TOKEN, OPENCODE_OFFLINE, SANDBOX_TOKEN, ControlPlane, GitHttpServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]


async def container_log(provider: DockerProvider, ref: str) -> str:
    lines = await provider._engine.docker.containers.container(ref).log(stdout=True, stderr=True)
    return "".join(lines)[-4000:]


async def wait_ready(provider: DockerProvider, ref: str, plane: ControlPlane) -> dict[str, Any]:
    """The bridge's ``ready``; fails at once (with the log) if the container ends first."""
    for _ in range(60):  # bounded: 60 x 2 s
        try:
            return await plane.wait_for("ready", timeout=2)
        except TimeoutError:
            if await provider.status(ref) != "running":
                pytest.fail("the sandbox ended before ready; container log:\n" + await container_log(provider, ref))
    pytest.fail("no ready from the bridge in 120 s; container log:\n" + await container_log(provider, ref))


async def test_supervisor_boots_in_the_sandbox_image(
    docker_provider: DockerProvider,
    docker_spec: Callable[..., Any],
    sandbox_image: str,
    git_server: GitHttpServer,
    control_plane: ControlPlane,
) -> None:
    head = git_server.create_repo("acme", "demo", {"README.md": "hello from the repo\n"})
    env = build_sandbox_env(
        sandbox_id="sbx_docker_boot",
        repo_owner="acme",
        repo_name="demo",
        control_plane_url=control_plane.url,
        sandbox_auth_token=SANDBOX_TOKEN,
        session=SessionConfig(session_id="sess-docker", repo_owner="acme", repo_name="demo"),
        vcs_clone_token=GIT_TOKEN,
        vcs_clone_url_template=git_server.url_template,
        user_env=OPENCODE_OFFLINE,
    )
    created = await docker_provider.create(
        docker_spec(image=sandbox_image, network="host", env=env, command=["python", "-m", "sandbox_runtime"])
    )
    ref = created.provider_object_id
    ready = await wait_ready(docker_provider, ref, control_plane)
    assert ready["sandboxId"] == "sbx_docker_boot"

    checkout = await docker_provider.exec(ref, ["git", "-C", "/workspace/demo", "rev-parse", "HEAD"], timeout=30)
    assert checkout.stdout.decode().strip() == head
    readme = b"".join([c async for c in docker_provider.read_file(ref, "/workspace/demo/README.md")])
    assert readme == b"hello from the repo\n"
    owner = await docker_provider.exec(ref, ["stat", "-c", "%U", "/workspace/demo"], timeout=30)
    assert owner.stdout == b"sandbox\n"

    await docker_provider.stop(ref)  # SIGTERM: the supervisor shuts down its children gracefully
    assert await docker_provider.status(ref) == "stopped"
