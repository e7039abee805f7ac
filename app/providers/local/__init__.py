"""The ``local`` provider: bubblewrap sandboxes on this host (see ``provider``)."""

from app.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
