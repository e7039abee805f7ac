"""Configuration: clear errors, secrets, aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ConfigError, Settings, ensure_secret_file


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SANDBOX_API_SECRET", "DAYTONA_API_SECRET", "MODAL_API_SECRET", "SANDBOX_PROVIDER"):
        monkeypatch.delenv(name, raising=False)


def test_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no API secret"):
        Settings.load(data_dir=tmp_path).validate_secrets()


def test_refuses_a_short_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_API_SECRET", "short")
    with pytest.raises(ConfigError, match="shorter than 32"):
        Settings.load(data_dir=tmp_path).validate_secrets()


def test_refuses_a_placeholder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_API_SECRET", "changeme")
    with pytest.raises(ConfigError, match="placeholder"):
        Settings.load(data_dir=tmp_path).validate_secrets()


@pytest.mark.parametrize("name", ["SANDBOX_API_SECRET", "DAYTONA_API_SECRET", "MODAL_API_SECRET"])
def test_secret_aliases_and_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "a" * 32 + ", " + "b" * 40)
    assert Settings.load(data_dir=tmp_path).validate_secrets() == [b"a" * 32, b"b" * 40]


def test_generated_secret_file(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "d")
    assert ensure_secret_file(settings) is True
    assert ensure_secret_file(settings) is False
    assert (tmp_path / "d" / "api-secret").stat().st_mode & 0o777 == 0o600
    assert len(settings.validate_secrets()[0]) == 64


def test_invalid_values_name_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="SANDBOX_PORT"):
        Settings.load(data_dir=tmp_path)


def test_provider_sub_configs_read_the_same_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "SANDBOX_LOCAL_BWRAP": "/opt/bwrap",
        "SANDBOX_LOCAL_UID_BASE": "300000",
        "SANDBOX_LOCAL_RUNTIME": "false",
        "SANDBOX_DOCKER_NETWORK": "none",
        "SANDBOX_DOCKER_PULL": "missing",
        "DAYTONA_API_URL": "http://127.0.0.1:9/api",
        "DAYTONA_API_KEY": "dtn-key",
        "MODAL_TOKEN_ID": "ak-1",
        "MODAL_TOKEN_SECRET": "as-1",
        "MODAL_TUNNEL_PORTS": "4096, 8080",
        "MODAL_IDLE_TIMEOUT": "300",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load(data_dir=tmp_path)
    assert (settings.local.bwrap, settings.local.uid_base, settings.local.runtime) == ("/opt/bwrap", 300000, False)
    assert (settings.docker.network, settings.docker.pull) == ("none", "missing")
    assert settings.daytona.api_url == "http://127.0.0.1:9/api"
    assert settings.daytona.api_key is not None and settings.daytona.api_key.get_secret_value() == "dtn-key"
    assert settings.modal.token_id is not None and settings.modal.token_id.get_secret_value() == "ak-1"
    assert (settings.modal.tunnel_ports, settings.modal.idle_timeout_seconds) == ([4096, 8080], 300)
    assert settings.provider_config("docker") is settings.docker
    assert settings.provider_config("data_dir") is None
    assert settings.provider_config("fake") is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("SANDBOX_LOCAL_UID_BASE", "many"), ("SANDBOX_DOCKER_PULL", "sometimes"), ("MODAL_IDLE_TIMEOUT", "0")],
)
def test_a_bad_provider_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Settings.load(data_dir=tmp_path)


def test_a_variable_named_like_a_sub_config_is_not_read_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER", "yes")
    monkeypatch.setenv("local", '{"uid_base": 5000}')
    settings = Settings.load(data_dir=tmp_path)
    assert settings.docker.pull == "never"
    assert settings.local.uid_base != 5000


def test_an_override_that_names_no_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local_uid_base"):
        Settings.load(data_dir=tmp_path, local_uid_base=5000)
