"""Our view of a sandbox from its Pod and PVC: status, the reason for it, and ``ProviderSandbox``.

The PVC is the sandbox's lasting identity (it outlives ``stop``); the pod
says whether it runs:

    no pod, or a pod being deleted        stopped
    Pending (scheduling, pulling)         running   (where it is heading; create waits)
    Pending with a fatal waiting reason   failed    (bad image, bad config)
    Running                               running   (failed/stopped once the container ended)
    Succeeded                             stopped   (the entry command exited 0)
    Failed, Unknown                       failed    (entry command failed, evicted, node lost)

The reason (pod ``reason``/``message``, the container's terminated or
waiting reason, or an unschedulable condition) goes to
``ProviderSandbox.status_reason``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from app.providers.base import ProviderSandbox, ProviderStatus, Resources
from app.providers.kubernetes.names import IMAGE_ANNOTATION, RESOURCES_ANNOTATION, caller_labels
from app.providers.kubernetes.spec import CONTAINER, mebibytes

#: Waiting reasons from which a pod does not recover by itself.
FATAL_WAITING = frozenset(
    {"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)
_MAX_REASON = 500


def metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An object's ``metadata`` (empty when absent)."""
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def terminating(obj: Mapping[str, Any] | None) -> bool:
    """Whether the object is being deleted (it may linger while finalizers run)."""
    return obj is not None and bool(metadata(obj).get("deletionTimestamp"))


def _container_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            state = status.get("state")
            return state if isinstance(state, Mapping) else {}
    return {}


def _join(*parts: object) -> str | None:
    text = ": ".join(str(part) for part in parts if part not in (None, ""))
    return text[:_MAX_REASON] or None


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when the pod cannot be placed on any node."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        if scheduled and condition.get("reason") == "Unschedulable":
            return _join("Unschedulable", condition.get("message"))
    return None


def waiting_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a pending container will not start by itself (bad image, bad config), if so."""
    waiting = _container_state(pod).get("waiting") or {}
    if waiting.get("reason") in FATAL_WAITING:
        return _join(waiting.get("reason"), waiting.get("message"))
    return None


def pod_status(pod: Mapping[str, Any]) -> tuple[ProviderStatus, str | None]:
    """Our status of a pod and why (see the module docstring)."""
    if terminating(pod):
        return "stopped", None
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    state = _container_state(pod)
    terminated = state.get("terminated")
    pod_reason = _join(status.get("reason"), status.get("message"))
    if phase in ("Failed", "Unknown"):
        if pod_reason:
            return "failed", pod_reason
        if terminated:
            return "failed", _join(terminated.get("reason"), f"exit code {terminated.get('exitCode')}")
        return "failed", f"pod phase {phase}"
    if phase == "Succeeded":
        return "stopped", _join("Completed", "the entry command exited 0")
    if terminated:  # the container ended; the phase follows shortly
        code = terminated.get("exitCode")
        if code == 0:
            return "stopped", _join("Completed", "the entry command exited 0")
        return "failed", _join(terminated.get("reason"), f"exit code {code}")
    if phase == "Pending":
        problem = waiting_problem(pod)
        if problem:
            return "failed", problem
        return "running", unschedulable(pod)
    return "running", None


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Whether commands can run in the pod: Running with the container started."""
    if terminating(pod) or (pod.get("status") or {}).get("phase") != "Running":
        return False
    return "running" in _container_state(pod)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _recorded_resources(obj: Mapping[str, Any]) -> Resources:
    raw = (metadata(obj).get("annotations") or {}).get(RESOURCES_ANNOTATION)
    try:
        return Resources.model_validate(json.loads(raw)) if raw else Resources()
    except (ValueError, ValidationError):
        return Resources()


def describe(pvc: Mapping[str, Any] | None, pod: Mapping[str, Any] | None) -> ProviderSandbox:
    """A ``ProviderSandbox`` from the sandbox's PVC and pod (at least one of them)."""
    primary = pvc if pvc is not None else pod
    assert primary is not None, "describe needs the PVC or the pod"
    status, reason = pod_status(pod) if pod is not None and not terminating(pod) else ("stopped", None)
    resources = _recorded_resources(primary)
    capacity = ((pvc or {}).get("status") or {}).get("capacity", {}).get("storage")
    if capacity:
        with contextlib.suppress(ValueError):  # an unreadable capacity: keep the request
            resources = resources.model_copy(update={"disk_mb": mebibytes(capacity)})
    return ProviderSandbox(
        provider_object_id=str(metadata(primary).get("name")),
        status=status,
        labels=caller_labels(primary),
        image=(metadata(primary).get("annotations") or {}).get(IMAGE_ANNOTATION),
        created_at=_parse_time(metadata(primary).get("creationTimestamp")),
        resources=resources,
        status_reason=reason,
    )
