"""Providers by name: lazy imports with clear errors, and the (sub-config, context) each is built with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.provider_settings import LocalSettings
from app.providers import registry
from app.providers.base import ProviderContext
from app.providers.registry import create_provider, provider_class
from app.settings import ConfigError, Settings


class Recorder:
    """Stands for a provider class: keeps what the registry built it with."""

    def __init__(self, config: Any, context: ProviderContext) -> None:
        self.config = config
        self.context = context


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        provider_class("nope")


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "ghost", ("tests.unit.ghost_provider_module:X", "ghost"))
    with pytest.raises(ConfigError, match="not available"):
        registry.provider_class("ghost")
    monkeypatch.setitem(registry.PROVIDERS, "needs", ("tests.unit.needs_missing_dep:X", "needs"))
    with pytest.raises(ConfigError, match=r"pip install '\.\[needs\]'"):
        registry.provider_class("needs")


def test_a_provider_gets_its_own_sub_config_and_the_core_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "local", (f"{__name__}:Recorder", None))
    settings = Settings.load(
        data_dir=tmp_path,
        base_image="img:1",
        default_ttl_seconds=600,
        instance_scope_override="scope-1",
        local=LocalSettings(uid_base=5000),
    )
    built: Any = create_provider("local", settings)
    assert built.config is settings.local
    assert built.config.uid_base == 5000
    assert built.context == ProviderContext(
        data_dir=tmp_path, scope="scope-1", base_image="img:1", default_ttl_seconds=600
    )


def test_a_provider_without_settings_of_its_own_gets_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "recorder", (f"{__name__}:Recorder", None))
    built: Any = create_provider("recorder", Settings.load(data_dir=tmp_path))
    assert built.config is None
    assert built.context.scope == Settings.load(data_dir=tmp_path).instance_scope
