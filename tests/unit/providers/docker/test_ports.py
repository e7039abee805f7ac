"""How a docker sandbox's port is reached, from its inspect (``app.providers.docker.ports``)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from app.errors import PreviewUnsupported, SandboxNotRunning
from app.providers.docker.ports import port_endpoint


def inspect(mode: str, address: str = "", *, running: bool = True, pid: int = 0) -> dict[str, Any]:
    return {
        "Id": "c0ffee" * 10,
        "State": {"Running": running, "Pid": pid},
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": {mode: {"IPAddress": address}} if address else {}},
    }


def test_host_network_is_the_loopback() -> None:
    assert port_endpoint(inspect("host"), 3000).url == "http://127.0.0.1:3000"


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
