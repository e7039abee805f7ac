"""Compat request models: tolerant of unknown fields and empty strings, strict where the reference is."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.providers.base import Resources
from app.schemas.compat import (
    TIMEOUT_MESSAGE,
    CompatCreateSandbox,
    CompatRestoreSandbox,
    CompatWarmSandbox,
)

CREATE = {
    "session_id": "s-1",
    "repo_owner": "acme",
    "repo_name": "app",
    "control_plane_url": "https://cp.example.test",
    "sandbox_auth_token": "tok",
}


def test_unknown_fields_are_kept_aside_and_reported_with_nested_names() -> None:
    body = CompatCreateSandbox.model_validate(
        {
            **CREATE,
            "code_server_enabled": True,
            "mcp_servers": [{"name": "x"}],
            "repositories": [{"repo_owner": "a"}],
            "sandbox_settings": {"cpuCores": 2, "memoryMib": 4096, "tunnelPorts": [3000], "diskGib": 10},
        }
    )
    assert body.ignored_fields() == [
        "code_server_enabled",
        "mcp_servers",
        "repositories",
        "sandbox_settings.diskGib",
    ]
    assert body.resources() == Resources(cpu=2, memory_mb=4096)
    assert body.tunnel_ports() == [3000]  # honoured: answered as tunnel_urls


def test_empty_strings_count_as_absent() -> None:
    warm = CompatWarmSandbox.model_validate({"repo_owner": "acme", "repo_name": "app", "control_plane_url": ""})
    assert warm.control_plane_url is None
    create = CompatCreateSandbox.model_validate({**CREATE, "sandbox_id": "", "branch": "", "snapshot_id": ""})
    assert (create.sandbox_id, create.branch, create.snapshot_id) == (None, None, None)
    with pytest.raises(ValidationError) as missing:
        CompatCreateSandbox.model_validate({**CREATE, "session_id": ""})
    assert missing.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize("value", [True, False, 1.5, 60.0, "60", 0, -3])
def test_timeout_seconds_must_be_a_positive_json_integer(value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        CompatCreateSandbox.model_validate({**CREATE, "timeout_seconds": value})
    assert TIMEOUT_MESSAGE in str(refused.value)


def test_timeout_seconds_integer_is_the_ttl() -> None:
    assert CompatCreateSandbox.model_validate({**CREATE, "timeout_seconds": 7200}).timeout_seconds == 7200


def test_restore_session_fields_leave_ignored_ones_out() -> None:
    body = CompatRestoreSandbox.model_validate(
        {
            "snapshot_image_id": "snap_0123456789abcdef",
            "session_config": {
                "session_id": "s",
                "repo_owner": "acme",
                "repo_name": "app",
                "working_branch_name": "feature",
                "base_sha": "abc",
            },
            "control_plane_url": "https://cp.example.test",
            "sandbox_auth_token": "tok",
        }
    )
    fields = body.session_config.session_fields()
    assert "working_branch_name" not in fields and fields["session_id"] == "s"
    assert body.ignored_fields() == ["session_config.base_sha", "session_config.working_branch_name"]
