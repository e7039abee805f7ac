"""Names, labels, manifests and statuses of the kubernetes provider: pure functions, no cluster."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from app.errors import BadRequest, UnsupportedSpec
from app.provider_settings import KubernetesSettings
from app.providers.base import Resources, SandboxSpec
from app.providers.kubernetes.names import (
    HASHED_KEY_PREFIX,
    LABELS_ANNOTATION,
    MANAGED_LABEL,
    SCOPE_LABEL,
    is_label_key,
    is_object_name,
    kube_label,
    label_selector,
    matches,
    object_name,
)
from app.providers.kubernetes.spec import cpu_quantity, mebibytes, parse_quantity, plan_sandbox, pod_from_template
from app.providers.kubernetes.status import describe, is_ready, pod_status


def config(**overrides: Any) -> KubernetesSettings:
    return KubernetesSettings(kubeconfig="/dev/null", **overrides)


def plan(spec: SandboxSpec, **overrides: Any) -> Any:
    name = object_name("scope", spec.sandbox_id)
    return plan_sandbox(spec, name=name, scope="scope", image="img:1", config=config(**overrides), token="t0")


# -- names and labels ----------------------------------------------------------------


@pytest.mark.parametrize("sandbox_id", ["sbx_1", "My.Sandbox_ID", "-x-", "a" * 128, "___", "9"])
def test_object_names_are_dns_labels(sandbox_id: str) -> None:
    name = object_name("scope", sandbox_id)
    assert is_object_name(name) and len(name) <= 63
    assert name == object_name("scope", sandbox_id), "deterministic: a retried create finds its object"
    assert name != object_name("other-scope", sandbox_id)


def test_ids_differing_only_in_case_or_punctuation_get_different_names() -> None:
    assert object_name("s", "Sbx.1") != object_name("s", "sbx-1")
    assert not is_object_name("lcl-000000000000") and not is_object_name("sc-UPPER")


def test_label_mapping() -> None:
    assert kube_label("team", "a") == ("team", "a")
    assert kube_label("example.com/role", "x_y.z") == ("example.com/role", "x_y.z")
    assert kube_label("sandbox-control.id", "sbx_1") == ("sandbox-control.id", "sbx_1")
    for key, value in (("a/b/c", "x"), ("k", "v" * 64), ("k", "has space"), ("Upper.Com/k", "v")):
        mapped_key, mapped_value = kube_label(key, value)
        assert mapped_key.startswith(HASHED_KEY_PREFIX) and is_label_key(mapped_key)
        assert kube_label(key, value) == (mapped_key, mapped_value)
    assert kube_label("k", "v" * 64) != kube_label("k", "w" * 64)


def test_selector_and_exact_match() -> None:
    selector = label_selector("scope", {"team": "a"})
    assert selector == f"{MANAGED_LABEL}=true,{SCOPE_LABEL}=scope,team=a"
    obj = {"metadata": {"annotations": {LABELS_ANNOTATION: json.dumps({"team": "a", "x": "y"})}}}
    assert matches(obj, {"team": "a"}) and matches(obj, None) and not matches(obj, {"team": "b"})


# -- manifests ---------------------------------------------------------------------------


def test_plain_sandbox_is_a_pvc_and_a_locked_down_pod() -> None:
    planned = plan(SandboxSpec(sandbox_id="sbx_1", env={"A": "1"}, labels={"team": "a"}))
    assert planned.policy is None
    pod, pvc = planned.pod, planned.pvc
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": planned.name}}]
    [container] = spec["containers"]
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["workingDir"] == "/workspace" and container["command"][0] == "sh"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container["resources"] == {}
    assert spec["securityContext"]["fsGroup"] == 1000
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10240Mi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod_from_template(pvc) == pod, "start recreates exactly this pod"
    for obj in (pod, pvc):
        assert obj["metadata"]["labels"]["team"] == "a"
        assert obj["metadata"]["namespace"] == "sandbox-control"


def test_template_settings_reach_the_pod() -> None:
    planned = plan(
        SandboxSpec(sandbox_id="sbx_t", command=["python3", "-m", "sandbox_runtime"]),
        runtime_class="gvisor",
        service_account="sandboxes",
        node_selector={"pool": "sandboxes"},
        tolerations=[{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
        image_pull_secrets=["regcred"],
        image_pull_policy="IfNotPresent",
        storage_class="fast",
        run_as_user=1000,
        namespace="agents",
    )
    spec = planned.pod["spec"]
    assert spec["runtimeClassName"] == "gvisor" and spec["serviceAccountName"] == "sandboxes"
    assert spec["nodeSelector"] == {"pool": "sandboxes"}
    assert spec["tolerations"][0]["key"] == "sandbox"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    container = spec["containers"][0]
    assert container["command"] == ["python3", "-m", "sandbox_runtime"]
    assert container["imagePullPolicy"] == "IfNotPresent" and container["securityContext"]["runAsUser"] == 1000
    assert planned.pvc["spec"]["storageClassName"] == "fast"
    assert planned.pod["metadata"]["namespace"] == planned.pvc["metadata"]["namespace"] == "agents"


def test_network_none_adds_a_deny_all_policy_for_that_pod_only() -> None:
    planned = plan(SandboxSpec(sandbox_id="sbx_n", network="none"))
    policy = planned.policy
    assert policy is not None
    assert policy["spec"]["podSelector"] == {"matchLabels": {"sandbox-control.io/sandbox": planned.name}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
    with pytest.raises(UnsupportedSpec) as caught:
        plan(SandboxSpec(sandbox_id="sbx_n2", network="corp-net"))
    assert caught.value.field == "network"


def test_resources() -> None:
    planned = plan(SandboxSpec(sandbox_id="r", resources=Resources(cpu=2, memory_mb=1536, disk_mb=512, gpu="A10G")))
    container = planned.pod["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "1536Mi"}
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "1536Mi", "nvidia.com/gpu": "1"}
    assert planned.pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "A10G"}
    assert planned.pvc["spec"]["resources"]["requests"]["storage"] == "512Mi"
    assert planned.resources == Resources(cpu=2, memory_mb=1536, disk_mb=512, gpu="A10G")
    custom = plan(SandboxSpec(sandbox_id="g", resources=Resources(gpu="any")), gpu_resource="amd.com/gpu")
    assert custom.pod["spec"]["containers"][0]["resources"] == {"limits": {"amd.com/gpu": "1"}}
    assert "nodeSelector" not in custom.pod["spec"]


def test_pids_need_the_clusters_limit() -> None:
    with pytest.raises(UnsupportedSpec) as caught:
        plan(SandboxSpec(sandbox_id="p", resources=Resources(pids=100)))
    assert caught.value.field == "resources.pids" and "SANDBOX_K8S_POD_PIDS_LIMIT" in caught.value.message
    with pytest.raises(UnsupportedSpec):
        plan(SandboxSpec(sandbox_id="p", resources=Resources(pids=100)), pod_pids_limit=1024)
    assert plan(SandboxSpec(sandbox_id="p", resources=Resources(pids=2048)), pod_pids_limit=1024).resources.pids == 1024


def test_bad_env_and_command_are_refused() -> None:
    with pytest.raises(BadRequest):
        plan(SandboxSpec(sandbox_id="e", env={"A=B": "x"}))
    with pytest.raises(BadRequest):
        plan(SandboxSpec(sandbox_id="e", command=[]))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1Gi", Decimal(1024**3)),
        ("1e3", Decimal(1000)),
        ("1.5Mi", Decimal(1572864)),
    ],
)
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_quantity_helpers() -> None:
    assert (cpu_quantity(0.5), cpu_quantity(1), cpu_quantity(1.25), cpu_quantity(0.0001)) == (
        "500m",
        "1",
        "1250m",
        "1m",
    )
    assert (mebibytes("10Gi"), mebibytes("1G"), mebibytes("512Mi")) == (10240, 953, 512)
    with pytest.raises(ValueError):
        parse_quantity("ten")


# -- statuses -----------------------------------------------------------------------------


def pod(phase: str, *, state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    statuses = [{"name": "sandbox", "state": state or {}}]
    return {"metadata": {"name": "sc-x"}, "status": {"phase": phase, "containerStatuses": statuses, **status}}


def test_pod_statuses() -> None:
    assert pod_status(pod("Running", state={"running": {}})) == ("running", None)
    assert is_ready(pod("Running", state={"running": {}})) and not is_ready(pod("Pending"))
    assert pod_status(pod("Pending")) == ("running", None)
    assert pod_status(pod("Succeeded")) == ("stopped", "Completed: the entry command exited 0")
    failed = pod("Failed", state={"terminated": {"exitCode": 3, "reason": "Error"}})
    assert pod_status(failed) == ("failed", "Error: exit code 3")
    evicted = pod("Failed", reason="Evicted", message="The node was low on resource: memory.")
    assert pod_status(evicted) == ("failed", "Evicted: The node was low on resource: memory.")
    oom = pod("Running", state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    assert pod_status(oom) == ("failed", "OOMKilled: exit code 137")
    pulling = pod("Pending", state={"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}})
    assert pod_status(pulling) == ("failed", "ImagePullBackOff: no such image")
    unschedulable = pod(
        "Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}],
    )
    assert pod_status(unschedulable) == ("running", "Unschedulable: 0/3 nodes")
    deleting = pod("Running", state={"running": {}})
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert pod_status(deleting) == ("stopped", None)
    assert pod_status(pod("Unknown"))[0] == "failed"


def test_describe_prefers_the_pvc_and_its_capacity() -> None:
    planned = plan(SandboxSpec(sandbox_id="d", labels={"k": "v"}, resources=Resources(cpu=1, disk_mb=1000)))
    pvc = {**planned.pvc, "status": {"capacity": {"storage": "1Gi"}}}
    pvc["metadata"] = {**pvc["metadata"], "creationTimestamp": "2024-05-01T10:00:00Z"}
    stopped = describe(pvc, None)
    assert (stopped.provider_object_id, stopped.status, stopped.labels) == (planned.name, "stopped", {"k": "v"})
    assert stopped.resources == Resources(cpu=1, disk_mb=1024) and stopped.image == "img:1"
    assert stopped.created_at is not None and stopped.created_at.year == 2024
    running = describe(pvc, {**planned.pod, "status": {"phase": "Running"}})
    assert running.status == "running"
