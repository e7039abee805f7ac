"""The ``daytona`` provider: Daytona sandboxes through the async SDK (see ``provider``)."""

from app.providers.daytona.provider import DaytonaProvider

__all__ = ["DaytonaProvider"]
