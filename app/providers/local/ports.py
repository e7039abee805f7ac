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
import socket
from pathlib import Path

from app.errors import PreviewUnsupported, PreviewUpstreamUnreachable
from app.providers.local import procs
from app.providers.netns import connect_loopback, namespace_endpoint
from app.providers.ports import PortEndpoint, loopback_endpoint

#: TCP state LISTEN in /proc/<pid>/net/tcp.
_LISTEN = "0A"


def listens(pid: int, port: int, *, uid: int | None = None) -> bool:
    """Whether the network namespace of ``pid`` has a TCP socket listening on ``port`` (owned by ``uid``)."""
    wanted = f":{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            owner_ok = len(fields) > 7 and (uid is None or fields[7] == str(uid))
            if owner_ok and fields[1].endswith(wanted) and fields[3] == _LISTEN:
                return True
    return False


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
        return loopback_endpoint(port) if uid is None else _host_endpoint(uid, port)
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


def _host_endpoint(uid: int, port: int) -> PortEndpoint:
    """A host-network sandbox's port on the host's loopback, only while the sandbox listens there.

    The port is the host's: without this check a preview of port 8080 would
    reach whatever listens there (this service, a database) once the sandbox
    stopped listening. Each connection is made only if a socket of the
    sandbox's own host uid listens on the port.
    """

    def connect() -> socket.socket:
        if not listens(os.getpid(), port, uid=uid):
            raise PreviewUpstreamUnreachable(f"nothing in the sandbox listens on port {port}")
        try:
            return connect_loopback(port)
        except OSError as exc:
            raise PreviewUpstreamUnreachable(f"cannot connect to port {port} in the sandbox: {exc}") from exc

    async def opener() -> socket.socket:
        return await asyncio.to_thread(connect)

    return PortEndpoint(url=f"http://127.0.0.1:{port}", opener=opener)
