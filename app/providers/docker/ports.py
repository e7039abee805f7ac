"""Reaching a port of a docker sandbox, for preview URLs, from its ``inspect``.

On the host network the port is on 127.0.0.1, and is the container's only while
one of its processes holds the listening socket (checked at every connect); on a bridge or named network at
the container's address there. A ``network: "none"`` container has only its
own loopback: the service (as root, on the engine's host) connects inside its
network namespace, that of the container's init process (``app.providers.netns``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.errors import PreviewUnsupported, SandboxNotRunning
from app.providers.netns import guarded_loopback_endpoint, namespace_endpoint
from app.providers.ports import PortEndpoint
from app.providers.procnet import holds_any, listening_inodes, pid_namespace_members


def _address(info: dict[str, Any]) -> str | None:
    for network in (info.get("NetworkSettings") or {}).get("Networks", {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
        if network.get("GlobalIPv6Address"):
            return f"[{network['GlobalIPv6Address']}]"
    return None


def _local_pid(info: dict[str, Any]) -> int | None:
    """The container's init pid when it runs on this host (its cgroup names the container), else None."""
    pid = int((info.get("State") or {}).get("Pid") or 0)
    if pid <= 0:
        return None
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    return pid if str(info.get("Id", "")) in cgroup else None


def port_endpoint(info: dict[str, Any], port: int) -> PortEndpoint:
    """How the service reaches ``port`` of the container ``info`` describes."""
    ref = str(info.get("Id", ""))[:12]
    if not (info.get("State") or {}).get("Running"):
        raise SandboxNotRunning(f"sandbox {ref} is not running", ref=ref)
    mode = (info.get("HostConfig") or {}).get("NetworkMode")
    if mode == "host":
        return _host_endpoint(info, port)
    address = _address(info)
    if address is not None:
        return PortEndpoint(url=f"http://{address}:{port}", cache_seconds=30.0)
    init_pid = _engine_host_pid(info, "without a network")

    async def find_pid() -> int:
        return init_pid

    return namespace_endpoint(find_pid, port)


def _host_endpoint(info: dict[str, Any], port: int) -> PortEndpoint:
    """A host-network container's port: a host port, reached only while one of its processes listens.

    Containers usually run as root, so unlike a local sandbox the socket's owner
    uid cannot tell the container from a host service: the listening socket must
    be held by a process in the container's PID namespace. Seeing that takes the
    engine's host's ``/proc`` and root; without them the port is not offered.
    """
    init_pid = _engine_host_pid(info, "on the host network")

    def serves() -> bool:
        return holds_any(pid_namespace_members(init_pid), listening_inodes(init_pid, port))

    return guarded_loopback_endpoint(port, serves)


def _engine_host_pid(info: dict[str, Any], mode: str) -> int:
    """The container's init pid, for a service that runs as root on the engine's host (else refused)."""
    pid = _local_pid(info)
    if pid is None or os.geteuid() != 0:
        raise PreviewUnsupported(
            f"a docker sandbox {mode} is reachable only by a root service on the engine's host", provider="docker"
        )
    return pid
