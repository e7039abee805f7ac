"""A kubernetes sandbox's port is its pod's IP (``app.providers.kubernetes.ports``)."""

from __future__ import annotations

import pytest

from app.errors import SandboxNotRunning
from app.providers.kubernetes.ports import port_endpoint


def pod(ip: str | None, phase: str = "Running") -> dict[str, object]:
    status: dict[str, object] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": "sbx"}, "status": status}


def test_pod_ip_v4_and_v6() -> None:
    assert port_endpoint(pod("10.1.2.3"), "sbx", 3000).url == "http://10.1.2.3:3000"
    assert port_endpoint(pod("fd00::5"), "sbx", 3000).url == "http://[fd00::5]:3000"


@pytest.mark.parametrize("found", [None, pod(None), pod("10.1.2.3", "Pending"), pod("10.1.2.3", "Failed")])
def test_no_running_pod_with_an_ip(found: dict[str, object] | None) -> None:
    with pytest.raises(SandboxNotRunning):
        port_endpoint(found, "sbx", 3000)
