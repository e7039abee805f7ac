"""How a docker sandbox's port is reached, from its inspect (``app.providers.docker.ports``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

import pytest

from app.errors import PreviewUnsupported, PreviewUpstreamUnreachable, SandboxNotRunning
from app.providers.docker import ports
from app.providers.docker.ports import port_endpoint
from app.providers.local import procs


def inspect(mode: str, address: str = "", *, running: bool = True, pid: int = 0) -> dict[str, Any]:
    return {
        "Id": "c0ffee" * 10,
        "State": {"Running": running, "Pid": pid},
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": {mode: {"IPAddress": address}} if address else {}},
    }


def test_host_network_needs_the_container_on_this_host() -> None:
    # Without the engine host's /proc nobody can tell the container's socket from a host service's.
    with pytest.raises(PreviewUnsupported):
        port_endpoint(inspect("host", pid=1), 3000)


async def test_host_network_connects_only_to_a_socket_the_container_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    # This test process plays the container: its PID namespace holds the listener.
    monkeypatch.setattr(ports, "_local_pid", lambda info: os.getpid())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        endpoint = port_endpoint(inspect("host"), port)
        assert endpoint.url == f"http://127.0.0.1:{port}" and endpoint.opener is not None
        (await endpoint.opener()).close()
    finally:
        listener.close()
    with pytest.raises(PreviewUpstreamUnreachable):
        await endpoint.opener()


async def test_host_network_refuses_a_listener_outside_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    # The "container" is a process in another PID namespace; the listener is this (host) process's.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a process in another PID namespace")
    other = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "30"])
    try:
        for _ in range(100):
            inner = procs.children(other.pid)
            if inner:
                break
            time.sleep(0.02)
        monkeypatch.setattr(ports, "_local_pid", lambda info: inner[0])
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            endpoint = port_endpoint(inspect("host"), listener.getsockname()[1])
            assert endpoint.opener is not None
            with pytest.raises(PreviewUpstreamUnreachable):
                await endpoint.opener()
        finally:
            listener.close()
    finally:
        other.kill()
        other.wait()


def test_a_bridge_network_is_the_container_address() -> None:
    endpoint = port_endpoint(inspect("sandboxes", "172.18.0.5"), 8080)
    assert endpoint.url == "http://172.18.0.5:8080" and endpoint.opener is None


def test_a_stopped_container_is_not_running() -> None:
    with pytest.raises(SandboxNotRunning):
        port_endpoint(inspect("host", running=False), 3000)


def test_no_network_needs_the_container_on_this_host() -> None:
    # Pid 1 is not the container (its cgroup does not name it): the engine is elsewhere.
    with pytest.raises(PreviewUnsupported):
        port_endpoint(inspect("none", pid=1), 3000)
    with pytest.raises(PreviewUnsupported):
        port_endpoint(inspect("none", pid=0), 3000)
    assert os.getpid() > 1
