"""The env contract: the service's ``build_sandbox_env`` and the runtime's parsing agree."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import ValidationError

from sandbox_runtime import contract as c
from sandbox_runtime import sandbox_env as e
from sandbox_runtime.config import ConfigError, RuntimeConfig
from sandbox_runtime.jsonlog import JsonLogger, scrub


def _session(**kwargs: object) -> c.SessionConfig:
    return c.SessionConfig(session_id="s1", repo_owner="acme", repo_name="widget", **kwargs)  # type: ignore[arg-type]


def test_reserved_names_are_listed_sorted() -> None:
    assert e.find_reserved_env_names(None) == []
    assert e.find_reserved_env_names({"FOO": "1", "ANTHROPIC_API_KEY": "k"}) == []
    assert e.find_reserved_env_names({"VCS_CLONE_TOKEN": "x", "BOOT_MODE": "y", "OK": "z"}) == [
        "BOOT_MODE",
        "VCS_CLONE_TOKEN",
    ]
    assert {
        "SANDBOX_ID",
        "SESSION_CONFIG",
        "ENV_SERVER_CMD",
        "WORKSPACE_DIR",
        "RUNTIME_STATE_DIR",
    } <= c.RESERVED_ENV_NAMES


def test_build_sandbox_env_refuses_reserved_user_env() -> None:
    with pytest.raises(e.ReservedEnvNameError) as info:
        e.build_sandbox_env(sandbox_id="x", repo_owner="o", repo_name="n", user_env={"SANDBOX_AUTH_TOKEN": "t"})
    assert info.value.names == ["SANDBOX_AUTH_TOKEN"]
    with pytest.raises(ValueError, match="not a runtime env name"):
        e.build_sandbox_env(sandbox_id="x", repo_owner="o", repo_name="n", runtime_overrides={"FOO": "1"})
    with pytest.raises(ValueError, match="credentials"):
        e.build_sandbox_env(
            sandbox_id="x", repo_owner="o", repo_name="n", vcs_clone_url_template="https://u:p@{host}/{owner}/{name}"
        )


def test_build_sandbox_env_round_trips_into_the_runtime_config() -> None:
    session = _session(branch="dev", opencode_session_id="ses_1")
    env = e.build_sandbox_env(
        sandbox_id="sbx-1",
        repo_owner="acme",
        repo_name="widget",
        boot_mode=c.BootMode.SNAPSHOT_RESTORE,
        control_plane_url="https://cp.example.com/",
        sandbox_auth_token="tok",
        session=session,
        vcs_host="ghe.example.com",
        vcs_clone_token="ghs_x",
        runtime_overrides={c.GIT_CLONE_DEPTH: "5"},
        user_env={"ANTHROPIC_API_KEY": "k"},
    )
    assert env["ANTHROPIC_API_KEY"] == "k" and c.ENV_SERVER_CMD not in env
    config = RuntimeConfig.from_env(env)
    assert config.session == session and config.boot_mode is c.BootMode.SNAPSHOT_RESTORE
    assert config.control_plane_url == "https://cp.example.com"
    assert config.clone_url == "https://ghe.example.com/acme/widget.git"
    assert config.clone_depth == 5 and config.effective_branch == "dev"
    assert config.env_server_argv == ["opencode", "serve", "--port", "4096", "--hostname", "127.0.0.1"]
    assert config.env_server_port == 4096 and config.health_path == "/global/health"
    assert str(config.state_dir) == "/workspace/.sandbox-runtime"
    assert str(config.session_id_file) == "/workspace/.sandbox-runtime/opencode-session-id"
    assert set(config.secrets) == {"tok", "ghs_x"}


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, c.BootMode.FRESH),
        ({"BOOT_MODE": "repo_image"}, c.BootMode.REPO_IMAGE),
        ({"BOOT_MODE": "BUILD", "RESTORED_FROM_SNAPSHOT": "true"}, c.BootMode.BUILD),
        ({"IMAGE_BUILD_MODE": "1"}, c.BootMode.BUILD),
        ({"RESTORED_FROM_SNAPSHOT": "true", "FROM_REPO_IMAGE": "true"}, c.BootMode.SNAPSHOT_RESTORE),
        ({"FROM_REPO_IMAGE": "yes"}, c.BootMode.REPO_IMAGE),
        ({"FROM_REPO_IMAGE": "false"}, c.BootMode.FRESH),
    ],
)
def test_boot_mode_resolution(env: dict[str, str], mode: c.BootMode) -> None:
    assert c.resolve_boot_mode(env) is mode


def test_invalid_values_are_config_errors() -> None:
    with pytest.raises(ValueError, match="BOOT_MODE"):
        c.resolve_boot_mode({"BOOT_MODE": "warm"})
    with pytest.raises(ConfigError, match="SESSION_CONFIG"):
        RuntimeConfig.from_env({"SESSION_CONFIG": json.dumps({"session_id": "s", "surprise": 1})})
    with pytest.raises(ConfigError, match="GIT_CLONE_DEPTH"):
        RuntimeConfig.from_env({"GIT_CLONE_DEPTH": "deep"})
    with pytest.raises(ConfigError, match="REPO_NAME"):
        RuntimeConfig.from_env({"REPO_NAME": "../etc"})
    with pytest.raises(ValidationError):
        c.SessionConfig.model_validate({"session_id": "s", "repo_owner": "o", "repo_name": "n", "extra": 1})


def test_build_result_lines_parse() -> None:
    line = c.format_build_line(c.BUILD_COMPLETE_MARKER, {"head_sha": "a" * 40, "branch": "main"})
    result = c.parse_build_result("noise\n" + line)
    assert result is not None and result.success and result.head_sha == "a" * 40
    failed = c.parse_build_result(c.format_build_line(c.BUILD_FAILED_MARKER, {"error": "boom"}))
    assert failed is not None and not failed.success and failed.error == "boom"
    assert c.parse_build_result("SANDBOX_BUILD_COMPLETE {not json\n") is None


def test_snapshot_paths() -> None:
    assert c.snapshot_paths({}) == ["/workspace"]
    assert c.snapshot_paths({"WORKSPACE_DIR": "/w", "RUNTIME_STATE_DIR": "/var/state"}) == ["/w", "/var/state"]


def test_logger_redacts_secrets_wherever_they_appear() -> None:
    out = io.StringIO()
    log = JsonLogger("t", secrets=["s3cr3t-token"], stream=out)
    log.info("x", url="https://u:s3cr3t-token@h/", nested={"k": "s3cr3t-token"})
    log.relay("child", '{"event": "raw s3cr3t-token"}\n')
    log.relay("child", "plain s3cr3t-token line\n")
    text = out.getvalue()
    assert "s3cr3t-token" not in text and text.count("***") == 4
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[1] == {"event": "raw ***"}, "a child's JSON line passes through (redacted)"
    assert lines[2]["source"] == "child" and lines[2]["line"] == "plain *** line"
    assert scrub("ab", ["ab"]) == "ab", "too-short secrets are not redacted everywhere"
