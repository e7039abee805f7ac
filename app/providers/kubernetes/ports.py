"""Reaching a port of a kubernetes sandbox, for preview URLs: its pod's IP.

The service must run where pod IPs are routable (in the cluster, as the
deployment in ``deploy/kubernetes`` does); a NetworkPolicy that isolates
sandboxes must let the service's pods in on the previewed ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import SandboxNotRunning
from app.providers.kubernetes.status import pod_status, terminating
from app.providers.ports import PortEndpoint


def port_endpoint(pod: Mapping[str, Any] | None, ref: str, port: int) -> PortEndpoint:
    """``http://<pod IP>:<port>`` of a running pod; ``SandboxNotRunning`` otherwise."""
    status = (pod or {}).get("status") or {}
    if pod is None or terminating(pod) or pod_status(pod)[0] != "running" or status.get("phase") != "Running":
        raise SandboxNotRunning(f"sandbox {ref} is not running", ref=ref)
    address = str(status.get("podIP") or "")
    if not address:
        raise SandboxNotRunning(f"sandbox {ref} has no pod IP yet", ref=ref)
    host = f"[{address}]" if ":" in address else address
    # A pod keeps its IP for its life; a restart makes a new pod (and a new IP).
    return PortEndpoint(url=f"http://{host}:{port}", cache_seconds=30.0)
