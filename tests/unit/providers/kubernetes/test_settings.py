"""KubernetesSettings from the environment, and the registry building the provider from Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.providers.kubernetes import KubernetesProvider
from app.providers.registry import create_provider
from app.settings import ConfigError, Settings


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", "/a:/b")
    monkeypatch.setenv("SANDBOX_K8S_NAMESPACE", "agents")
    monkeypatch.setenv("SANDBOX_K8S_NODE_SELECTOR", '{"pool": "sandboxes"}')
    monkeypatch.setenv("SANDBOX_K8S_TOLERATIONS", '[{"key": "sandbox", "operator": "Exists"}]')
    monkeypatch.setenv("SANDBOX_K8S_IMAGE_PULL_SECRETS", "one, two")
    monkeypatch.setenv("SANDBOX_K8S_RUNTIME_CLASS", "gvisor")
    monkeypatch.setenv("SANDBOX_K8S_PVC_SIZE", "20Gi")
    settings = Settings.load(data_dir=tmp_path)
    k8s = settings.kubernetes
    assert (k8s.kubeconfig, k8s.namespace, k8s.runtime_class, k8s.pvc_size) == ("/a:/b", "agents", "gvisor", "20Gi")
    assert k8s.node_selector == {"pool": "sandboxes"} and k8s.tolerations[0]["key"] == "sandbox"
    assert k8s.image_pull_secrets == ["one", "two"]
    assert k8s.gpu_resource == "nvidia.com/gpu" and k8s.pod_pids_limit is None


@pytest.mark.parametrize(
    ("name", "value"), [("SANDBOX_K8S_NAMESPACE", "Not_A_Namespace"), ("SANDBOX_K8S_PVC_SIZE", "ten")]
)
def test_bad_values_stop_the_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        Settings.load(data_dir=tmp_path)


def test_registry_builds_the_provider_with_its_context(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path, provider="kubernetes", base_image="img:1", instance_scope_override="s1")
    provider = create_provider("kubernetes", settings)
    assert isinstance(provider, KubernetesProvider)
    assert provider._context.scope == "s1" and provider._context.base_image == "img:1"
    assert provider._config is settings.kubernetes
