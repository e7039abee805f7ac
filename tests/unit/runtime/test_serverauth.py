"""The env server's password: made fresh, private, and never shown."""

from __future__ import annotations

import base64
from pathlib import Path

from sandbox_runtime import serverauth
from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.envserver import env_server_env
from sandbox_runtime.sandbox_env import build_sandbox_env
from tests.fixtures.runtime import SANDBOX_TOKEN, session_config


def test_each_start_makes_a_new_private_password(tmp_path: Path) -> None:
    assert serverauth.load(tmp_path) is None
    first = serverauth.create(tmp_path / "run")
    second = serverauth.create(tmp_path / "run")
    assert first.password != second.password and len(second.password) >= 40
    assert serverauth.load(tmp_path / "run") == second
    path = serverauth.auth_file(tmp_path / "run")
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no partial file left behind"
    assert second.password not in repr(second)
    user, _, password = base64.b64decode(second.authorization.removeprefix("Basic ")).decode().partition(":")
    assert (user, password) == ("opencode", second.password)


def test_the_env_server_gets_the_password_and_no_session_names(tmp_path: Path) -> None:
    env = build_sandbox_env(
        sandbox_id="sbx-1",
        repo_owner="acme",
        repo_name="widget",
        control_plane_url="http://cp",
        sandbox_auth_token=SANDBOX_TOKEN,
        session=session_config(),
        workspace_dir=str(tmp_path / "ws"),
        runtime_overrides={"RUNTIME_RUN_DIR": str(tmp_path / "run")},
        user_env={"FOO": "bar"},
    )
    config = RuntimeConfig.from_env(env)
    credentials = serverauth.create(config.run_dir)
    server_env = env_server_env(env, config, credentials)
    assert server_env["OPENCODE_SERVER_PASSWORD"] == credentials.password
    assert server_env["OPENCODE_SERVER_USERNAME"] == "opencode"
    assert server_env["BASH_ENV"] == server_env["ENV"] == str(tmp_path / "run" / "session.env")
    assert server_env["FOO"] == "bar"
    assert not {"SANDBOX_ID", "SANDBOX_AUTH_TOKEN", "CONTROL_PLANE_URL", "SESSION_CONFIG"} & server_env.keys()
    assert "OPENCODE_SERVER_PASSWORD" not in env_server_env(env, config, None)
