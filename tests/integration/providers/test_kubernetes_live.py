"""The ``kubernetes`` provider against a real cluster: run only when ``KUBECONFIG`` is set.

    kind create cluster --name sandboxes        # or k3s: export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
    kind load docker-image sandbox-control-sandbox:dev --name sandboxes
    kubectl apply -f deploy/kubernetes/namespace.yaml
    KUBECONFIG=~/.kube/config pytest -m k8s_live tests/integration/providers/test_kubernetes_live.py

The provider reads its settings from the environment as the service does
(``SANDBOX_K8S_NAMESPACE``, ``SANDBOX_K8S_IMAGE``, default image
``sandbox-control-sandbox:dev``). Each run uses a scope of its own and
deletes what it made. Without ``KUBECONFIG`` every test here is skipped,
in strict mode too (no cluster can be installed on CI machines); with it, a
cluster that cannot be reached fails under ``SANDBOX_TEST_STRICT=1``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import ProviderError, ProviderUnavailable, SandboxNotRunning
from app.provider_settings import KubernetesSettings
from app.providers.base import TIMEOUT_EXIT_CODE, ProviderContext, SandboxSpec
from app.providers.kubernetes import KubernetesProvider
from tests.fixtures.kubernetes import LIVE_SKIP_REASON
from tests.support import missing_component

pytestmark = [pytest.mark.k8s_live, pytest.mark.slow]

CONNECT = 'timeout 5 bash -c "exec 3<>/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT" && echo connected'


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[KubernetesProvider]:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip(LIVE_SKIP_REASON)
    settings = KubernetesSettings()
    context = ProviderContext(tmp_path, f"live-{secrets.token_hex(4)}", "sandbox-control-sandbox:dev")
    provider = KubernetesProvider(settings, context)
    try:
        await provider.aopen()
        await provider.ping()
    except (ProviderError, ProviderUnavailable) as exc:
        missing_component(f"the cluster of KUBECONFIG cannot be used: {exc}")
    try:
        yield provider
    finally:
        for sandbox in await provider.list():
            await provider.delete(sandbox.provider_object_id)
        await provider.aclose()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_lifecycle_exec_files_and_deadline(live: KubernetesProvider) -> None:
    ref = (await live.create(SandboxSpec(sandbox_id="live-1", labels={"suite": "live"}))).provider_object_id
    assert (await live.exec(ref, ["echo", "hi"], timeout=30)).stdout == b"hi\n"
    assert (await live.exec(ref, ["cat"], timeout=30, stdin=b"through stdin")).stdout == b"through stdin"
    result = await live.exec(ref, ["sh", "-c", "(while :; do echo x >> ticks; sleep 0.1; done) & sleep 100"], timeout=2)
    assert (result.exit_code, result.timed_out) == (TIMEOUT_EXIT_CODE, True)
    first = (await live.exec(ref, ["wc", "-l", "ticks"], timeout=30)).stdout
    await asyncio.sleep(1)
    assert (await live.exec(ref, ["wc", "-l", "ticks"], timeout=30)).stdout == first, "the group was killed"
    await live.write_file(ref, "/workspace/kept", _chunks(b"kept"))
    await live.stop(ref)
    with pytest.raises(SandboxNotRunning):
        await live.exec(ref, ["true"], timeout=10)
    await live.start(ref)
    assert b"".join([c async for c in live.read_file(ref, "/workspace/kept")]) == b"kept"
    assert [s.provider_object_id for s in await live.list({"suite": "live"})] == [ref]
    await live.delete(ref)


async def test_network_none_blocks_egress(live: KubernetesProvider) -> None:
    """Needs a CNI that enforces NetworkPolicy (k3s's default, kind's kindnet since v0.24, Calico, Cilium)."""
    open_ref = (await live.create(SandboxSpec(sandbox_id="live-open"))).provider_object_id
    closed_ref = (await live.create(SandboxSpec(sandbox_id="live-closed", network="none"))).provider_object_id
    assert (await live.exec(open_ref, ["bash", "-c", CONNECT], timeout=30)).stdout == b"connected\n"
    blocked = await live.exec(closed_ref, ["bash", "-c", CONNECT], timeout=30)
    assert blocked.exit_code != 0 and b"connected" not in blocked.stdout
