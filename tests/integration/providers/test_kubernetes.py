"""The ``kubernetes`` provider's own behaviour, against the stub API server (``tests/fixtures/k8s_stub.py``).

Covered here: object names, labels and annotations; ``stop`` keeps the PVC
and ``start`` makes a new pod on it; ``network: "none"`` is a deny-all
NetworkPolicy for that pod; errors classified at the boundary (401, 403,
404, 409 retried, 5xx retried then 503); eviction reads as ``failed`` with
its reason; the v4 channel protocol (framed stdin) when v5 is not served;
resources as requests, limits, extended resources and PVC size, and what
is refused. The rest of the contract runs in the provider conformance suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.errors import (
    BadRequest,
    ProviderAuthError,
    ProviderUnavailable,
    SandboxNotFound,
    SandboxNotRunning,
    UnsupportedSpec,
)
from app.providers.base import Resources, SandboxSpec
from app.providers.kubernetes import KubernetesProvider
from app.providers.kubernetes.names import HASHED_KEY_PREFIX, LABELS_ANNOTATION, SANDBOX_ID_ANNOTATION, SANDBOX_LABEL
from tests.fixtures.k8s_stub import FORBIDDEN_TOKEN, KubeStub
from tests.fixtures.kubernetes import NAMESPACE, kubernetes_stack

pytestmark = pytest.mark.slow

PODS = rf"/api/v1/namespaces/{NAMESPACE}/pods"
PVCS = rf"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 100_000):
        yield data[start : start + 100_000]


async def _read(provider: KubernetesProvider, ref: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in provider.read_file(ref, path)])


def _object(stub: KubeStub, plural: str, name: str) -> dict[str, Any] | None:
    return stub.store.find(NAMESPACE, plural, name)


async def test_names_labels_and_annotations(provider_workdir: Path) -> None:
    labels = {"team": "a", "deep/key/path": "x", "long": "v" * 100, "sandbox-control.id": "My_Sandbox.ID"}
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        created = await provider.create(SandboxSpec(sandbox_id="My_Sandbox.ID", labels=labels))
        name = created.provider_object_id
        assert name.startswith("sc-my-sandbox-id-") and len(name) <= 63 and name == name.lower()
        for plural in ("pods", "persistentvolumeclaims"):
            obj = _object(stub, plural, name)
            assert obj is not None
            meta = obj["metadata"]
            assert meta["annotations"][SANDBOX_ID_ANNOTATION] == "My_Sandbox.ID"
            assert json.loads(meta["annotations"][LABELS_ANNOTATION]) == labels
            # Valid pairs verbatim; the others hashed under our prefix.
            assert meta["labels"]["team"] == "a" and meta["labels"]["sandbox-control.id"] == "My_Sandbox.ID"
            assert meta["labels"][SANDBOX_LABEL] == name
            assert "deep/key/path" not in meta["labels"] and "long" not in meta["labels"]
            assert sum(key.startswith(HASHED_KEY_PREFIX) for key in meta["labels"]) == 2
        assert created.labels == labels
        # Selection works on labels Kubernetes cannot hold verbatim, server-side.
        for wanted in ({"long": "v" * 100}, {"deep/key/path": "x", "team": "a"}):
            assert [s.provider_object_id for s in await provider.list(wanted)] == [name]
        assert await provider.list({"long": "v" * 99}) == []
        selectors = [p for m, p in stub.requests if m == "GET" and p.endswith("/pods")]
        assert selectors, "list goes to the API with a label selector"
        # Another scope's service in the same namespace sees none of it.
        other = KubernetesProvider(provider._config, provider._context.__class__(Path("."), "other", None))
        await other.aopen()
        try:
            assert await other.list() == []
            with pytest.raises(SandboxNotFound):
                await other.status(name)
        finally:
            await other.aclose()


async def test_stop_keeps_the_pvc_and_start_makes_a_new_pod(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_stop"))).provider_object_id
        await provider.write_file(ref, "/workspace/kept", _chunks(b"kept"))
        first_uid = _object(stub, "pods", ref)["metadata"]["uid"]  # type: ignore[index]
        await provider.stop(ref)
        assert _object(stub, "pods", ref) is None
        pvc = _object(stub, "persistentvolumeclaims", ref)
        assert pvc is not None and not pvc["metadata"].get("deletionTimestamp")
        [listed] = await provider.list()
        assert (listed.provider_object_id, listed.status) == (ref, "stopped")
        with pytest.raises(SandboxNotRunning):
            await provider.exec(ref, ["true"], timeout=5)
        await provider.start(ref)
        assert _object(stub, "pods", ref)["metadata"]["uid"] != first_uid  # type: ignore[index]
        assert await _read(provider, ref, "/workspace/kept") == b"kept"
        await provider.delete(ref)
        assert _object(stub, "pods", ref) is None and _object(stub, "persistentvolumeclaims", ref) is None


async def test_network_none_is_a_deny_all_policy_for_that_pod(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        isolated = (await provider.create(SandboxSpec(sandbox_id="sbx_none", network="none"))).provider_object_id
        open_ = (await provider.create(SandboxSpec(sandbox_id="sbx_open"))).provider_object_id
        policy = _object(stub, "networkpolicies", isolated)
        assert policy is not None
        assert policy["spec"] == {
            "podSelector": {"matchLabels": {SANDBOX_LABEL: isolated}},
            "policyTypes": ["Ingress", "Egress"],
        }
        assert _object(stub, "networkpolicies", open_) is None
        await provider.delete(isolated)
        assert _object(stub, "networkpolicies", isolated) is None
        with pytest.raises(UnsupportedSpec) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_named", network="my-net"))
        assert caught.value.field == "network"


async def test_unauthorized_and_forbidden_fail_fast(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir, token="wrong-token") as (provider, stub):
        with pytest.raises(ProviderAuthError) as caught:
            await provider.list()
        assert "401" in caught.value.message and "wrong-token" not in caught.value.message
        # One retry with refreshed credentials, then no more.
        assert stub.count("GET", PVCS) == 2
        with pytest.raises(ProviderAuthError):
            await provider.ping()
    async with kubernetes_stack(provider_workdir, token=FORBIDDEN_TOKEN) as (provider, stub):
        with pytest.raises(ProviderAuthError) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_forbidden"))
        assert "403" in caught.value.message and "rbac.yaml" in caught.value.message
        assert stub.count("POST", PVCS) == 1


async def test_not_found_and_not_running(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_gone"))).provider_object_id
        # The pod deleted behind our back: the PVC says the sandbox exists, stopped.
        stub.call(stub.pods.delete(NAMESPACE, ref, 0))
        with pytest.raises(SandboxNotRunning):
            await provider.exec(ref, ["true"], timeout=5)
        assert await provider.status(ref) == "stopped"
        stub.call(stub.pods.delete_claim(NAMESPACE, ref))
        for call in (provider.status, provider.stop, provider.start, provider.delete):
            with pytest.raises(SandboxNotFound):
                await call(ref)
        with pytest.raises(SandboxNotFound):
            await provider.exec(ref, ["true"], timeout=5)


async def test_conflict_on_create_is_retried(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        stub.fail_next("POST", PODS, 409)
        created = await provider.create(SandboxSpec(sandbox_id="sbx_409"))
        assert created.status == "running"
        assert stub.count("POST", PODS) == 2
        # Recreating right after a stop meets the terminating pod: wait, then create.
        await provider.stop(created.provider_object_id)
        await provider.start(created.provider_object_id)
        assert await provider.status(created.provider_object_id) == "running"
        # A live sandbox of the same id is a real conflict (and is left alone).
        with pytest.raises(Exception) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_409"))
        assert getattr(caught.value, "status_code", None) == 409
        assert await provider.status(created.provider_object_id) == "running"


async def test_server_errors_are_retried_then_unavailable(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        stub.fail_next("GET", PVCS, 503, count=2)
        assert await provider.list() == []
        assert stub.count("GET", PVCS) == 3
        stub.fail_next("GET", PVCS, 500, count=10)
        with pytest.raises(ProviderUnavailable):
            await provider.list()
        assert stub.count("GET", PVCS) == 6  # 3 more: the configured attempts
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_5xx"))).provider_object_id
        stub.fail_next("GET", rf"{PODS}/{ref}/exec", 502)
        assert (await provider.exec(ref, ["echo", "ok"], timeout=10)).stdout == b"ok\n"


async def test_eviction_reads_as_failed_with_the_reason(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_evict"))).provider_object_id
        stub.evict(NAMESPACE, ref, "The node was low on resource: memory.")
        assert await provider.status(ref) == "failed"
        inspected = await provider.inspect(ref)
        assert inspected.status_reason == "Evicted: The node was low on resource: memory."
        [listed] = await provider.list()
        assert (listed.status, listed.status_reason) == ("failed", inspected.status_reason)
        with pytest.raises(SandboxNotRunning):
            await provider.exec(ref, ["true"], timeout=5)
        # start replaces the evicted pod on the same volume.
        await provider.start(ref)
        assert await provider.status(ref) == "running"


async def test_entry_command_failure_has_its_exit_code_as_reason(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, _stub):
        ref = (
            await provider.create(SandboxSpec(sandbox_id="sbx_exit", command=["sh", "-c", "exit 3"]))
        ).provider_object_id
        for _ in range(200):
            inspected = await provider.inspect(ref)
            if inspected.status == "failed":
                break
            await asyncio.sleep(0.05)
        assert (inspected.status, inspected.status_reason) == ("failed", "Error: exit code 3")


async def test_v4_channel_protocol_frames_stdin(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        stub.pods.exec_protocols = ["v4.channel.k8s.io"]
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_v4"))).provider_object_id
        payload = bytes(range(256)) * 2000 + b"\n0\n12\n"
        result = await provider.exec(ref, ["sha256sum"], timeout=30, stdin=payload)
        assert provider._exec.protocol == "v4.channel.k8s.io"
        assert result.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
        await provider.write_file(ref, "/workspace/v4.bin", _chunks(payload))
        assert await _read(provider, ref, "/workspace/v4.bin") == payload
        tar = b"".join([c async for c in provider.export_tar(ref, "/workspace")])
        await provider.import_tar(ref, "/workspace/copy", _chunks(tar))
        assert await _read(provider, ref, "/workspace/copy/v4.bin") == payload
        assert (await provider.exec(ref, ["cat"], timeout=10, stdin=b"")).stdout == b""


async def test_resources_become_requests_limits_and_pvc_size(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        created = await provider.create(
            SandboxSpec(sandbox_id="sbx_res", resources=Resources(cpu=0.5, memory_mb=256, disk_mb=2048))
        )
        assert created.resources == Resources(cpu=0.5, memory_mb=256, disk_mb=2048)
        pod = _object(stub, "pods", created.provider_object_id)
        assert pod is not None
        quantities = {"cpu": "500m", "memory": "256Mi"}
        assert pod["spec"]["containers"][0]["resources"] == {"requests": quantities, "limits": quantities}
        pvc = _object(stub, "persistentvolumeclaims", created.provider_object_id)
        assert pvc["spec"]["resources"]["requests"]["storage"] == "2048Mi"  # type: ignore[index]
        default = await provider.create(SandboxSpec(sandbox_id="sbx_res_default"))
        assert default.resources.disk_mb == 10 * 1024
        with pytest.raises(UnsupportedSpec) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_pids", resources=Resources(pids=256)))
        assert caught.value.field == "resources.pids"


async def test_pids_accepted_only_at_or_above_the_clusters_limit(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir, pod_pids_limit=4096) as (provider, _stub):
        with pytest.raises(UnsupportedSpec):
            await provider.create(SandboxSpec(sandbox_id="sbx_pids_low", resources=Resources(pids=256)))
        created = await provider.create(SandboxSpec(sandbox_id="sbx_pids_ok", resources=Resources(pids=8192)))
        assert created.resources.pids == 4096


async def test_gpu_is_an_extended_resource(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir, start_timeout=1.5) as (provider, stub):
        with pytest.raises(UnsupportedSpec) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_gpu_none", resources=Resources(gpu="any")))
        assert caught.value.field == "resources.gpu" and "Insufficient nvidia.com/gpu" in caught.value.message
        assert await provider.list() == [], "a refused create leaves nothing behind"
        stub.pods.allocatable = {"nvidia.com/gpu": 1}
        created = await provider.create(SandboxSpec(sandbox_id="sbx_gpu", resources=Resources(gpu="any")))
        pod = _object(stub, "pods", created.provider_object_id)
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}  # type: ignore[index]
        with pytest.raises(UnsupportedSpec):  # a model the node does not have
            await provider.create(SandboxSpec(sandbox_id="sbx_gpu_a10", resources=Resources(gpu="A10G")))


async def test_an_image_that_cannot_be_pulled_is_refused(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, stub):
        stub.pods.images = {"sandbox-control-sandbox:dev"}
        with pytest.raises(BadRequest) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_img", image="no-such-image:1"))
        assert caught.value.details.get("field") == "image" and "ImagePullBackOff" in caught.value.message
        assert await provider.list() == []


async def test_port_endpoint_is_the_pod_ip(provider_workdir: Path) -> None:
    async with kubernetes_stack(provider_workdir) as (provider, _stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_preview"))).provider_object_id
        endpoint = await provider.port_endpoint(ref, 3000)
        assert endpoint.url == "http://127.0.0.1:3000" and endpoint.opener is None  # the stub's pod IP
        await provider.stop(ref)
        with pytest.raises(SandboxNotRunning):
            await provider.port_endpoint(ref, 3000)
