"""The service with ``SANDBOX_PROVIDER=kubernetes`` against the stub API server: the API works unchanged.

Sandboxes are created, run commands, move files, stop and start keeping
their workspace, and a snapshot restores into a new sandbox, all through
the HTTP API, with the provider built by the registry from ``Settings``
(``KUBECONFIG`` and ``SANDBOX_K8S_*`` as a deployment sets them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.kubernetes import STUB_IMAGE, kube_stub, stub_settings

pytestmark = pytest.mark.slow


async def _download(client: object, sandbox_id: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in client.download(sandbox_id, path)])  # type: ignore[attr-defined]


async def test_service_on_kubernetes(provider_workdir: Path, make_settings: Callable[..., Settings]) -> None:
    async with kube_stub(provider_workdir) as (stub, kubeconfig):
        settings = make_settings(
            provider="kubernetes",
            kubernetes=stub_settings(kubeconfig),
            base_image=STUB_IMAGE,
            data_dir=provider_workdir / "service",
        )
        async with serve_in_process(settings) as (_app, raw, client):
            assert (await raw.get("/readyz")).status_code == 200
            sandbox = await client.create(labels={"task": "k8s"}, resources={"cpu": 0.5, "memory_mb": 512})
            assert sandbox["provider"] == "kubernetes" and sandbox["status"] == "running"
            assert sandbox["provider_object_id"].startswith("sc-")
            ran = await client.exec(sandbox["id"], "echo from-the-pod; echo err >&2; exit 3", timeout_seconds=30)
            assert (ran["exit_code"], ran["stdout"], ran["stderr"]) == (3, "from-the-pod\n", "err\n")
            late = await client.exec(sandbox["id"], ["sleep", "30"], timeout_seconds=1)
            assert (late["exit_code"], late["timed_out"]) == (124, True)
            source = provider_workdir / "upload.txt"
            source.write_bytes(b"uploaded through the API\n")
            await client.upload(sandbox["id"], "/workspace/notes/upload.txt", source)
            await client.stop(sandbox["id"])
            assert (await client.get(sandbox["id"]))["status"] == "stopped"
            await client.start(sandbox["id"])
            assert await _download(client, sandbox["id"], "/workspace/notes/upload.txt") == source.read_bytes()
            snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
            restored = await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={})
            assert restored["provider_object_id"] != sandbox["provider_object_id"]
            assert await _download(client, restored["id"], "/workspace/notes/upload.txt") == source.read_bytes()
            listed = await client.list_sandboxes({"task": "k8s"})
            assert [s["id"] for s in listed] == [sandbox["id"]]
            for sandbox_id in (sandbox["id"], restored["id"]):
                await client.delete(sandbox_id)
        assert [key for key in stub.store.objects if key[1] == "pods"] == []
