"""Translation of sandbox specs to Engine container configs, and back (no engine needed)."""

from __future__ import annotations

import pytest

from app.errors import BadRequest, UnsupportedSpec
from app.providers.base import Resources, SandboxSpec
from app.providers.docker.spec import (
    IDLE_COMMAND,
    MANAGED_LABEL,
    RESOURCES_LABEL,
    SANDBOX_ID_LABEL,
    container_config,
    container_name,
    sandbox_from_inspect,
    sandbox_from_summary,
    split_image_reference,
    status_of_container,
)

OVERLAY_EXT4 = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]], "Runtimes": {"runc": {}}}
OVERLAY_XFS_GPU = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "xfs"]], "Runtimes": {"nvidia": {}}}


def test_config_has_labels_env_command_network() -> None:
    spec = SandboxSpec(sandbox_id="sbx_1", env={"A": "1"}, labels={"k": "v"}, ttl_seconds=30, command=["run", "x"])
    config = container_config(spec, "img:1", "none")
    assert config["Image"] == "img:1"
    assert config["Cmd"] == ["run", "x"] and config["Entrypoint"] == []
    assert config["Env"] == ["A=1"]
    assert config["Labels"]["k"] == "v"
    assert config["Labels"][MANAGED_LABEL] == "true"
    assert config["Labels"][SANDBOX_ID_LABEL] == "sbx_1"
    assert config["HostConfig"]["NetworkMode"] == "none"
    idle = container_config(SandboxSpec(sandbox_id="s"), "img", None)
    assert idle["Cmd"] == list(IDLE_COMMAND)
    assert "NetworkMode" not in idle["HostConfig"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (SandboxSpec(sandbox_id="s", labels={MANAGED_LABEL: "x"}), "labels"),
        (SandboxSpec(sandbox_id="s", env={"A=B": "1"}), "env"),
        (SandboxSpec(sandbox_id="s", command=[]), "command"),
        (SandboxSpec(sandbox_id="s", network="container:abc"), "network"),
    ],
)
def test_bad_specs_name_their_field(spec: SandboxSpec, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        container_config(spec, "img", spec.network)
    assert caught.value.details["field"] == field


def test_resources() -> None:
    spec = SandboxSpec(sandbox_id="s", resources=Resources(cpu=1.5, memory_mb=512, pids=100))
    host = container_config(spec, "img", None)["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (
        1_500_000_000,
        512 << 20,
        512 << 20,
        100,
    )
    with pytest.raises(UnsupportedSpec) as caught:
        container_config(SandboxSpec(sandbox_id="s", resources=Resources(disk_mb=100)), "img", None, OVERLAY_EXT4)
    assert caught.value.field == "resources.disk_mb"
    with pytest.raises(UnsupportedSpec) as caught:
        container_config(SandboxSpec(sandbox_id="s", resources=Resources(gpu="any")), "img", None, OVERLAY_EXT4)
    assert caught.value.field == "resources.gpu"
    ok = container_config(
        SandboxSpec(sandbox_id="s", resources=Resources(disk_mb=100, gpu="2")), "img", None, OVERLAY_XFS_GPU
    )["HostConfig"]
    assert ok["StorageOpt"] == {"size": "100M"}
    assert ok["DeviceRequests"][0]["Count"] == 2


def test_container_names_are_valid_and_distinct() -> None:
    assert container_name("sbx_abc") == "sandbox-control-sbx_abc"
    odd = {container_name("a/b"), container_name("a:b"), container_name("a b")}
    assert len(odd) == 3
    assert all(name.startswith("sandbox-control-a-b-") for name in odd)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("debian", ("debian", "latest")),
        ("debian:bookworm-slim", ("debian", "bookworm-slim")),
        ("127.0.0.1:5000/team/img", ("127.0.0.1:5000/team/img", "latest")),
        ("127.0.0.1:5000/team/img:2", ("127.0.0.1:5000/team/img", "2")),
        ("img@sha256:abc", ("img", "sha256:abc")),
    ],
)
def test_split_image_reference(image: str, expected: tuple[str, str]) -> None:
    assert split_image_reference(image) == expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"Status": "running"}, "running"),
        ({"Status": "exited", "ExitCode": 0}, "stopped"),
        ({"Status": "exited", "ExitCode": 137}, "stopped"),
        ({"Status": "exited", "ExitCode": 1}, "failed"),
        ({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, "failed"),
        ({"Status": "created"}, "stopped"),
        ({"Status": "dead"}, "failed"),
    ],
)
def test_status(state: dict[str, object], expected: str) -> None:
    assert status_of_container({"State": state}) == expected


def test_sandbox_from_engine_views() -> None:
    labels = {MANAGED_LABEL: "true", "k": "v", RESOURCES_LABEL: '{"cpu": 2.0}', "sandbox-control.id": "x"}
    inspected = sandbox_from_inspect(
        {
            "Id": "abc",
            "State": {"Status": "running"},
            "Config": {"Image": "img", "Labels": labels},
            "Created": "2026-01-02T03:04:05.123456789Z",
        }
    )
    assert inspected.labels == {"k": "v", "sandbox-control.id": "x"}
    # Labels inherited from the image are not the sandbox's.
    config = container_config(SandboxSpec(sandbox_id="s", labels={"k": "v"}), "img", None)
    stored = {**config["Labels"], "org.opencontainers.image.title": "from the image"}
    from_engine = sandbox_from_inspect({"Id": "a", "State": {"Status": "running"}, "Config": {"Labels": stored}})
    assert from_engine.labels == {"k": "v"}
    assert inspected.resources == Resources(cpu=2.0)
    assert inspected.created_at is not None and inspected.created_at.microsecond == 123456
    summary = sandbox_from_summary(
        {"Id": "abc", "State": "exited", "Status": "Exited (3) 2 minutes ago", "Labels": labels, "Created": 1}
    )
    assert summary.status == "failed"
