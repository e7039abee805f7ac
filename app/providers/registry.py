"""Providers by name, imported lazily so cloud SDKs stay optional extras."""

from __future__ import annotations

import importlib

from app.providers.base import Provider, ProviderContext
from app.settings import ConfigError, Settings

#: name -> ("module:Class", extra that provides its dependencies or None)
PROVIDERS: dict[str, tuple[str, str | None]] = {
    "local": ("app.providers.local:LocalProvider", None),
    "docker": ("app.providers.docker:DockerProvider", "docker"),
    "daytona": ("app.providers.daytona:DaytonaProvider", "daytona"),
    "modal": ("app.providers.modal:ModalProvider", "modal"),
    "kubernetes": ("app.providers.kubernetes:KubernetesProvider", "kubernetes"),
}


def provider_class(name: str) -> type[Provider]:
    """The provider class registered as ``name``, or a ``ConfigError`` saying why not."""
    try:
        target, extra = PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(sorted(PROVIDERS))}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"provider {name!r} is not available in this build") from None
        hint = f"; install it with: pip install '.[{extra}]'" if extra else ""
        raise ConfigError(f"provider {name!r} needs the package {exc.name!r}{hint}") from exc
    cls: type[Provider] = getattr(module, class_name)
    return cls


def create_provider(name: str, settings: Settings) -> Provider:
    """Build the provider ``name`` with the service settings."""
    cls = provider_class(name)
    if name == "kubernetes":
        context = ProviderContext(settings.data_dir, settings.instance_scope, settings.base_image)
        return cls(settings.kubernetes, context)  # type: ignore[call-arg]
    return cls(settings)  # type: ignore[call-arg]
