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
from app.providers.procnet import holder, listens, read_listening_inodes


def listener_pid(uid: int, port: int) -> int | None:
    """The process of the sandbox running as host ``uid`` that holds a socket listening on ``port``.

    The server itself, not any process of its namespace: the caller joins the namespace
    through ``/proc/<pid>/ns/net`` a moment later, and a network-less sandbox's namespaces
    hold short-lived processes too (the process supervisor's ``sleep`` every 0.1 s). Once
    the pid counter wraps, one of those is the namespace's lowest pid and is gone by the
    time the connection is made; the holder of the listening socket lives as long as
    the port is served.
    """
    own = os.stat("/proc/self/ns/net").st_ino
    namespaces: dict[int, list[int]] = {}
    for pid in procs.pids_of_uid(uid):
        try:
            namespace = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue  # exited while we looked
        if namespace != own:
            namespaces.setdefault(namespace, []).append(pid)
    for members in namespaces.values():
        # The tables are the namespace's: read them through the first member still there.
        tables = (read_listening_inodes(pid, port) for pid in members)
        inodes = next((read for read in tables if read is not None), None)
        server = holder(members, inodes) if inodes else None
        if server is not None:
            return server
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
