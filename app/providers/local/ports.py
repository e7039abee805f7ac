"""Reaching a port of a local sandbox, for preview URLs.

A sandbox on the host network listens on the host's loopback, and is reached
there only through a socket its own host uid listens with. A ``network:
"none"`` sandbox has namespaces of its own (one per exec: each exec is its own
bwrap), unreachable from anywhere, which is the point. The service, as root,
can still connect *inside* one (``app.providers.netns``): into the namespace of
the sandbox process that listens on the port. Nothing else can reach the sandbox.
"""

from __future__ import annotations

import asyncio
import os

from app.errors import PreviewUnsupported, PreviewUpstreamUnreachable
from app.providers.local import procs
from app.providers.netns import guarded_loopback_endpoint, namespace_endpoint
from app.providers.ports import PortEndpoint, loopback_endpoint
from app.providers.procnet import listens


def listener_pid(uid: int, port: int) -> int | None:
    """A process of the sandbox running as host ``uid`` whose own network namespace listens on ``port``."""
    own = os.stat("/proc/self/ns/net").st_ino
    seen = {own}
    for pid in procs.pids_of_uid(uid):
        try:
            namespace = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if namespace in seen:
            continue
        seen.add(namespace)
        if listens(pid, port):
            return pid
    return None


def port_endpoint(network: str | None, uid: int | None, port: int) -> PortEndpoint:
    """How the service reaches ``port`` of a local sandbox with ``network`` running as host ``uid``."""
    if network != "none":
        if uid is None:
            return loopback_endpoint(port)
        owner = uid
        # Only a socket of the sandbox's own host uid is the sandbox's port.
        return guarded_loopback_endpoint(port, lambda: listens(os.getpid(), port, uid=owner))
    if uid is None or os.geteuid() != 0:
        raise PreviewUnsupported(
            "a network-isolated local sandbox is reachable only when the service runs as root", provider="local"
        )
    sandbox_uid = uid

    async def listener() -> int:
        pid = await asyncio.to_thread(listener_pid, sandbox_uid, port)
        if pid is None:
            raise PreviewUpstreamUnreachable(f"nothing in the sandbox listens on port {port}")
        return pid

    return namespace_endpoint(listener, port)
