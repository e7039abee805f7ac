"""The manifests of one sandbox: a Pod, its workspace PVC and a deny-all NetworkPolicy.

Pure functions, no I/O. ``plan_sandbox`` is the one place where a
``SandboxSpec`` becomes Kubernetes objects: resources become requests and
limits (``gpu`` an extended resource, ``disk_mb`` the PVC size), ``network:
"none"`` a NetworkPolicy that selects only this pod and allows nothing in
or out, and everything a pod cannot honour is refused with
``UnsupportedSpec`` naming the field.

Sandbox pods never get an API token (``automountServiceAccountToken:
false``) nor the namespace's service links, run without privilege
escalation and with every capability dropped, and mount the PVC at
``/workspace`` (group-owned by ``fs_group`` so the image's user can write
it). ``restartPolicy: Never``: an entry command that ends makes the pod
Succeeded or Failed, which is the sandbox's status, as on the other providers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from app.errors import BadRequest, UnsupportedSpec
from app.provider_settings import KubernetesSettings
from app.providers.base import Resources, SandboxSpec
from app.providers.kubernetes.names import (
    CREATE_TOKEN_ANNOTATION,
    IMAGE_ANNOTATION,
    POD_TEMPLATE_ANNOTATION,
    RESOURCES_ANNOTATION,
    SANDBOX_LABEL,
    object_annotations,
    object_labels,
)

PROVIDER = "kubernetes"
#: The container of every sandbox pod (exec targets it by name).
CONTAINER = "sandbox"
WORKSPACE = "/workspace"
_VOLUME = "workspace"
#: PID 1 when the spec has no command: sleeps, and exits at once on SIGTERM
#: (a bare ``sleep`` as PID 1 ignores it and costs the whole stop grace).
IDLE_COMMAND = ("sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 86400 & wait $!; done")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SUFFIXES: dict[str, Decimal] = {
    "Ki": Decimal(1024),
    "Mi": Decimal(1024**2),
    "Gi": Decimal(1024**3),
    "Ti": Decimal(1024**4),
    "Pi": Decimal(1024**5),
    "Ei": Decimal(1024**6),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_MIB = Decimal(1024**2)


@dataclass(frozen=True)
class SandboxPlan:
    """The objects ``create`` makes, in order: policy (if any), PVC, pod."""

    name: str
    policy: dict[str, Any] | None
    pvc: dict[str, Any]
    pod: dict[str, Any]
    #: What the pod will be given, as our model (what ``create`` reports).
    resources: Resources


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``1Gi``, ``2``, ``1e3``) as a number of base units."""
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from exc
    return number * _SUFFIXES.get(match.group(2) or "", Decimal(1))


def cpu_quantity(cores: float) -> str:
    """Cores as a quantity, in millicores unless whole (``0.5`` -> ``500m``)."""
    millis = max(1, round(cores * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def mebibytes(text: str) -> int:
    """A byte quantity in whole MiB, rounded down (never reports more than there is)."""
    return int(parse_quantity(text) / _MIB)


def check_spec(spec: SandboxSpec, config: KubernetesSettings) -> None:
    """Refuse what a pod cannot honour (see the module docstring)."""
    if spec.network not in (None, "host", "none"):
        raise UnsupportedSpec(
            "network", PROVIDER, "pods share the cluster's pod network: only 'host' (its default) and 'none' exist"
        )
    pids = spec.resources.pids
    if pids is not None:
        limit = config.pod_pids_limit
        if limit is None:
            raise UnsupportedSpec(
                "resources.pids",
                PROVIDER,
                "Kubernetes has no per-pod process limit; set SANDBOX_K8S_POD_PIDS_LIMIT to the kubelets' "
                "podPidsLimit to accept requests it satisfies",
            )
        if pids < limit:
            raise UnsupportedSpec(
                "resources.pids", PROVIDER, f"the cluster's per-pod limit is {limit} processes and cannot be lowered"
            )
    for name, value in spec.env.items():
        if not _ENV_NAME.match(name) or "\0" in value:
            raise BadRequest(f"invalid environment variable: {name!r}", field="env")
    if spec.command is not None and (not spec.command or any("\0" in arg for arg in spec.command)):
        raise BadRequest("the entry command must be a non-empty list without NUL bytes", field="command")


def effective_resources(spec: SandboxSpec, config: KubernetesSettings) -> Resources:
    """What the pod is given: the request, the default PVC size, the cluster's pids limit."""
    asked = spec.resources
    disk = asked.disk_mb if asked.disk_mb is not None else mebibytes(config.pvc_size)
    return Resources(
        cpu=asked.cpu,
        memory_mb=asked.memory_mb,
        disk_mb=disk,
        gpu=asked.gpu,
        pids=config.pod_pids_limit if asked.pids is not None else None,
    )


def _container_resources(resources: Resources, config: KubernetesSettings) -> dict[str, Any]:
    quantities: dict[str, str] = {}
    if resources.cpu is not None:
        quantities["cpu"] = cpu_quantity(resources.cpu)
    if resources.memory_mb is not None:
        quantities["memory"] = f"{resources.memory_mb}Mi"
    # Requests equal limits: the sandbox gets what it asked for, and no more.
    result: dict[str, Any] = {"requests": dict(quantities), "limits": dict(quantities)} if quantities else {}
    if resources.gpu is not None:
        # Extended resources are whole devices and take limits only (requests default to them).
        result.setdefault("limits", {})[config.gpu_resource] = "1"
    return result


def _metadata(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}


def plan_sandbox(
    spec: SandboxSpec, *, name: str, scope: str, image: str, config: KubernetesSettings, token: str
) -> SandboxPlan:
    """The manifests of ``spec`` (raises ``UnsupportedSpec`` / ``BadRequest``); ``token`` marks this create."""
    check_spec(spec, config)
    namespace = config.namespace
    resources = effective_resources(spec, config)
    labels = object_labels(scope, name, spec.labels)
    annotations = {
        **object_annotations(spec.sandbox_id, spec.labels),
        IMAGE_ANNOTATION: image,
        CREATE_TOKEN_ANNOTATION: token,
        RESOURCES_ANNOTATION: resources.model_dump_json(exclude_none=True),
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(spec.command) if spec.command is not None else list(IDLE_COMMAND),
        "workingDir": WORKSPACE,
        "env": [{"name": key, "value": value} for key, value in spec.env.items()],
        "resources": _container_resources(resources, config),
        "volumeMounts": [{"name": _VOLUME, "mountPath": WORKSPACE}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    if config.run_as_user is not None:
        container["securityContext"]["runAsUser"] = config.run_as_user
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": config.stop_grace_seconds,
        "containers": [container],
        "volumes": [{"name": _VOLUME, "persistentVolumeClaim": {"claimName": name}}],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if config.fs_group is not None:
        pod_spec["securityContext"].update({"fsGroup": config.fs_group, "fsGroupChangePolicy": "OnRootMismatch"})
    node_selector = dict(config.node_selector)
    if spec.resources.gpu is not None and spec.resources.gpu != "any":
        node_selector[config.gpu_type_label] = spec.resources.gpu
    optional = {
        "runtimeClassName": config.runtime_class,
        "serviceAccountName": config.service_account,
        "nodeSelector": node_selector or None,
        "tolerations": list(config.tolerations) or None,
        "imagePullSecrets": [{"name": secret} for secret in config.image_pull_secrets] or None,
    }
    pod_spec.update({key: value for key, value in optional.items() if value is not None})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(name, namespace, labels, annotations)}
    pod["spec"] = pod_spec
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{resources.disk_mb}Mi"}},
    }
    if config.storage_class:
        pvc_spec["storageClassName"] = config.storage_class
    pvc_annotations = {**annotations, POD_TEMPLATE_ANNOTATION: json.dumps(pod, separators=(",", ":"))}
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(name, namespace, dict(labels), pvc_annotations),
        "spec": pvc_spec,
    }
    policy = None
    if spec.network == "none":
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(name, namespace, dict(labels), dict(annotations)),
            # Both types listed with no rules: nothing in, nothing out (DNS included).
            "spec": {"podSelector": {"matchLabels": {SANDBOX_LABEL: name}}, "policyTypes": ["Ingress", "Egress"]},
        }
    return SandboxPlan(name=name, policy=policy, pvc=pvc, pod=pod, resources=resources)


def pod_from_template(pvc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod ``create`` stored on the PVC, to recreate on ``start``; None if unreadable."""
    raw = ((pvc.get("metadata") or {}).get("annotations") or {}).get(POD_TEMPLATE_ANNOTATION)
    try:
        pod = json.loads(raw) if raw else None
    except ValueError:
        return None
    return pod if isinstance(pod, dict) and pod.get("kind") == "Pod" else None
