"""The service image (``Dockerfile``) as compose runs it: docker provider over the mounted
socket, snapshots in S3. Here S3 is the test server on 127.0.0.1 (no MinIO image can
be pulled on this machine; the compose file keeps MinIO for users) and the container
uses host networking."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from app.client import SandboxClient
from tests.fixtures.app import free_port
from tests.fixtures.docker import BASE_IMAGE, DockerEngine
from tests.support import missing_component

API_IMAGE = os.environ.get("SANDBOX_API_IMAGE", "sandbox-control:dev")
SOCKET = "/var/run/docker.sock"


@pytest.fixture
def api_container(docker_engine: DockerEngine, s3_server: object, s3_bucket: str) -> Iterator[tuple[str, str]]:
    if not docker_engine.has_image(API_IMAGE):
        missing_component(f"image {API_IMAGE} is not built (scripts/docker-setup.sh builds it)")
    if not os.path.exists(SOCKET):
        missing_component(f"no Docker socket at {SOCKET}")
    if not s3_server.running:  # type: ignore[attr-defined]
        s3_server.start()  # type: ignore[attr-defined]
    secret = secrets.token_hex(32)
    port = free_port()
    name = f"sandbox-api-test-{secrets.token_hex(4)}"
    env = {
        "SANDBOX_API_SECRET": secret,
        "SANDBOX_PROVIDER": "docker",
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_BASE_IMAGE": BASE_IMAGE,
        "SANDBOX_DOCKER_NETWORK": "none",
        "SANDBOX_INSTANCE_SCOPE": name,
        "S3_ENDPOINT": s3_server.endpoint,  # type: ignore[attr-defined]
        "S3_BUCKET": s3_bucket,
        "S3_ACCESS_KEY": s3_server.access_key,  # type: ignore[attr-defined]
        "S3_SECRET_KEY": s3_server.secret_key,  # type: ignore[attr-defined]
    }
    argv = ["docker", "run", "-d", "--name", name, "--network", "host", "-v", f"{SOCKET}:{SOCKET}"]
    argv += ["--group-add", str(os.stat(SOCKET).st_gid)]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    subprocess.run([*argv, API_IMAGE], check=True, capture_output=True, timeout=60)
    try:
        yield f"http://127.0.0.1:{port}", secret
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        leftovers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=sandbox-control.docker.scope={name}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, timeout=60)
        assert secret not in logs.stdout + logs.stderr


async def test_service_image_serves_and_runs_sandboxes(api_container: tuple[str, str]) -> None:
    url, secret = api_container
    deadline = time.monotonic() + 60
    ready = None
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                ready = await http.get(url + "/readyz")
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    assert ready is not None and ready.status_code == 200, ready.text if ready else "no answer"
    assert ready.json()["checks"] == {"state": "ok", "provider": "ok", "blobs": "ok"}
    async with SandboxClient(url, secret.encode()) as client:
        sandbox = await client.create(labels={"compose": "check"})
        result = await client.exec(
            sandbox["id"], ["sh", "-c", "echo from-container > /workspace/f && cat /workspace/f"]
        )
        assert (result["exit_code"], result["stdout"]) == (0, "from-container\n")
        snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
        assert snapshot["status"] == "ready"
        await client.delete(sandbox["id"])
