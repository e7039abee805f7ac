"""examples/local-docker applied for real against this machine's Docker engine.

The service comes up from the compose stack the modules render and answers
/readyz ready, runs and snapshots a sandbox, and ``terraform destroy`` leaves no
container, network or volume behind. No MinIO image can be pulled here, so the
example uses the tests' S3 server on 127.0.0.1 as an external endpoint, and the
service the host network (sandboxes get none)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.client import SandboxClient
from tests.fixtures.app import free_port
from tests.fixtures.docker import DockerEngine
from tests.fixtures.s3 import S3Server
from tests.fixtures.terraform import Terraform
from tests.support import missing_component

pytestmark = [pytest.mark.terraform, pytest.mark.docker, pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(600)]

API_IMAGE = os.environ.get("SANDBOX_API_IMAGE", "sandbox-control:dev")
READY_TIMEOUT = 90.0


def docker_ids(*args: str) -> list[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.split()


def leftovers(project: str) -> dict[str, list[str]]:
    """What the engine still holds of a deployment: by the compose project and the sandbox scope."""
    by_project = f"label=com.docker.compose.project={project}"
    return {
        "containers": docker_ids("ps", "-aq", "--filter", by_project),
        "sandboxes": docker_ids("ps", "-aq", "--filter", f"label=sandbox-control.docker.scope={project}"),
        "networks": docker_ids("network", "ls", "-q", "--filter", by_project),
        "volumes": docker_ids("volume", "ls", "-q", "--filter", by_project),
    }


@dataclass
class Deployment:
    """One apply of the example; ``destroy()`` is the operator's ``terraform destroy``."""

    terraform: Terraform
    directory: Path
    name: str
    url: str
    secret: str
    args: list[str]
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)
    destroyed: bool = False

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.terraform.run(*args, "-no-color", *self.args, cwd=self.directory, env=self.env, check=False)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def destroy(self) -> subprocess.CompletedProcess[str]:
        self.destroyed = True
        return self.run("destroy", "-auto-approve")


@pytest.fixture
def deployment(
    terraform: Terraform, docker_engine: DockerEngine, sandbox_image: str, s3_server: S3Server, s3_bucket: str
) -> Iterator[Deployment]:
    if not docker_engine.has_image(API_IMAGE):
        missing_component(f"image {API_IMAGE} is not built (scripts/docker-setup.sh builds it)")
    directory = terraform.path("examples/local-docker")
    terraform.init(directory)
    name = f"tf-{secrets.token_hex(4)}"
    port = free_port()
    secret = secrets.token_hex(32)
    deployment = Deployment(
        terraform=terraform,
        directory=directory,
        name=name,
        url=f"http://127.0.0.1:{port}",
        secret=secret,
        args=[
            f"-var=name={name}",
            f"-var=api_image={API_IMAGE}",
            f"-var=sandbox_image={sandbox_image}",
            f'-var=listen={{network_mode="host", bind_address="127.0.0.1", port={port}}}',
            f'-var=s3={{bucket="{s3_bucket}", endpoint="{s3_server.endpoint}"}}',
            "-var=sandbox_docker_network=none",
            "-var=remove_volumes=true",
            "-var=remove_sandboxes=true",
        ],
        # Secrets through the environment, as the example's README says: never in argv.
        env={
            "TF_VAR_api_secrets": json.dumps([secret]),
            "TF_VAR_s3_credentials": json.dumps(
                {"access_key": s3_server.access_key, "secret_key": s3_server.secret_key}
            ),
        },
    )
    try:
        yield deployment
    finally:
        if not deployment.destroyed:
            deployment.destroy()
        # Whatever the test did, leave nothing on the shared engine.
        for kind, ids in leftovers(name).items():
            if ids:
                command = {"networks": ["network", "rm"], "volumes": ["volume", "rm", "-f"]}.get(kind, ["rm", "-f"])
                subprocess.run(["docker", *command, *ids], capture_output=True, timeout=120)


async def wait_ready(url: str) -> httpx.Response:
    deadline = time.monotonic() + READY_TIMEOUT
    answer: httpx.Response | None = None
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                answer = await http.get(url + "/readyz")
                if answer.status_code == 200:
                    return answer
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError(f"/readyz never answered 200: {answer.text if answer is not None else 'no answer'}")


async def test_example_deploys_the_service_and_destroy_removes_it(deployment: Deployment, s3_server: S3Server) -> None:
    applied = deployment.run("apply", "-auto-approve")
    assert applied.returncode == 0, deployment.outputs[-1]

    ready = await wait_ready(deployment.url)
    body = ready.json()
    assert (body["status"], body["checks"]) == ("ready", {"state": "ok", "provider": "ok", "blobs": "ok"})
    (container,) = leftovers(deployment.name)["containers"]
    inspected = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, timeout=60).stdout)[0]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert inspected["Config"]["User"] not in ("", "0", "root")

    async with SandboxClient(deployment.url, deployment.secret.encode()) as client:
        sandbox = await client.create(labels={"deployed-by": "terraform"})
        result = await client.exec(
            sandbox["id"], ["sh", "-c", "echo from-terraform > /workspace/f && cat /workspace/f"]
        )
        assert (result["exit_code"], result["stdout"]) == (0, "from-terraform\n")
        snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
        assert snapshot["status"] == "ready"
    assert leftovers(deployment.name)["sandboxes"], "the service's sandbox should carry the deployment's scope"

    logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
    assert deployment.secret not in logs.stdout + logs.stderr

    # Applying again changes nothing: the deployment is idempotent.
    replan = deployment.run("plan", "-detailed-exitcode")
    assert replan.returncode == 0, deployment.outputs[-1]

    destroyed = deployment.destroy()
    assert destroyed.returncode == 0, deployment.outputs[-1]
    assert leftovers(deployment.name) == {"containers": [], "sandboxes": [], "networks": [], "volumes": []}
    # Neither the plans nor the provisioners' output ever showed a secret.
    for secret in (deployment.secret, s3_server.secret_key):
        assert not any(secret in output for output in deployment.outputs)
