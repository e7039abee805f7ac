"""The ``modal`` provider: Modal Sandboxes through the SDK's ``.aio`` calls (see ``provider``)."""

from app.providers.modal.provider import ModalProvider

__all__ = ["ModalProvider"]
