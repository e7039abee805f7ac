"""Providers by name, imported lazily so cloud SDKs stay optional extras.

``create_provider`` builds one as ``cls(settings.<name>, context)``: the provider's
own sub-config and the ``ProviderContext`` drawn from the core settings.
"""

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


def provider_context(settings: Settings) -> ProviderContext:
    """What a provider gets from the core settings."""
    return ProviderContext(
        data_dir=settings.data_dir,
        scope=settings.instance_scope,
        base_image=settings.base_image,
        default_ttl_seconds=settings.default_ttl_seconds,
    )


def create_provider(name: str, settings: Settings) -> Provider:
    """Build the provider ``name`` from its sub-config (``settings.<name>``) and the core context."""
    return provider_class(name)(settings.provider_config(name), provider_context(settings))
