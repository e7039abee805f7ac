"""Daytona's create request onto ours: images, resources, intervals, refused fields."""

from __future__ import annotations

import pytest

from app.errors import BadRequest
from app.schemas.daytona import CreateSandbox
from app.services.daytona_sandboxes import AUTO_DELETE, AUTO_STOP, PUBLIC, create_request, image_of


def test_resources_and_intervals_map_onto_our_request() -> None:
    body = CreateSandbox.model_validate(
        {
            "name": "task-1",
            "cpu": 2,
            "memory": 4,
            "disk": 10,
            "labels": {"a": "b"},
            "env": {"X": "1"},
            "autoStopInterval": 0,
            "autoDeleteInterval": 30,
            "ttlMinutes": 90,
            "networkBlockAll": True,
            "public": True,
        }
    )
    request, labels = create_request(body, image=None)
    assert request.sandbox_id == "task-1" and request.env == {"X": "1"} and request.labels == {"a": "b"}
    assert (request.resources.cpu, request.resources.memory_mb, request.resources.disk_mb) == (2, 4096, 10240)
    assert (request.ttl_seconds, request.network) == (5400, "none")
    assert labels == {AUTO_STOP: "0", AUTO_DELETE: "30", PUBLIC: "true"}


def test_only_a_plain_image_is_served() -> None:
    plain = CreateSandbox.model_validate({"buildInfo": {"dockerfileContent": "FROM debian:12\n"}})
    assert image_of(plain) == "debian:12"
    assert image_of(CreateSandbox()) is None
    steps = CreateSandbox.model_validate({"buildInfo": {"dockerfileContent": "FROM a\nRUN pip install x\n"}})
    with pytest.raises(BadRequest, match="buildInfo"):
        image_of(steps)


@pytest.mark.parametrize("field", ["volumes", "secrets", "kvm", "networkAllowList", "autoPauseInterval"])
def test_fields_without_a_counterpart_are_refused_by_name(field: str) -> None:
    values = {"volumes": [{"volumeId": "v"}], "secrets": [{"A": "b"}], "kvm": True}
    body = CreateSandbox.model_validate({field: values.get(field, "10.0.0.0/8" if field == "networkAllowList" else 5)})
    with pytest.raises(BadRequest, match=field):
        create_request(body, image=None)
