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


def test_unknown_provider_is_a_clear_error() -> None:
    from app.providers.registry import provider_class

    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        provider_class("nope")


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.providers import registry

    monkeypatch.setitem(registry.PROVIDERS, "ghost", ("tests.unit.ghost_provider_module:X", "ghost"))
    with pytest.raises(ConfigError, match="not available"):
        registry.provider_class("ghost")
    monkeypatch.setitem(registry.PROVIDERS, "needs", ("tests.unit.needs_missing_dep:X", "needs"))
    with pytest.raises(ConfigError, match=r"pip install '\.\[needs\]'"):
        registry.provider_class("needs")
