"""Sandboxes whose entry command ends on its own: their record follows within about a second.

Providers that see exits (``capabilities.exit_events``: local, docker) report
them through ``watch_exits``; one replica at a time (lease ``job:exits``)
turns each into the record's new status, ``stopped`` for exit status 0 and
``failed`` otherwise, with an ``exited`` event holding the exit status and the
end of the command's output (masked of tokens and credentials). A stop or
delete of our own is not reported by the provider, and a sandbox this replica
is busy with is left to that operation. Other providers' sandboxes are brought
up to date when their status is next read (``SandboxService.get``).
"""

from __future__ import annotations

from collections.abc import Callable

from app.logging import Redactor, get_logger
from app.providers.base import ExitEvent, Provider
from app.storage.state.sandboxes import SandboxStore

log = get_logger("sandboxes")

#: Characters of the command's output kept in the ``exited`` event.
TAIL_CHARS = 2000


class ExitWatcher:
    """Follows the provider's exit events into the state store."""

    def __init__(self, records: SandboxStore, provider: Provider, *, busy: Callable[[str], bool]) -> None:
        self._records = records
        self._provider = provider
        self._busy = busy
        self._redactor = Redactor()

    async def run(self) -> None:
        """Follow exits until cancelled (ends at once for a provider that cannot see them)."""
        async for event in self._provider.watch_exits():
            try:
                await self.handle(event)
            except Exception as exc:  # one bad event must not end the watch
                log.warning("sandbox.exit_event_failed", error=str(exc), error_type=type(exc).__name__)

    async def handle(self, event: ExitEvent) -> bool:
        """Apply one exit; True when a record changed."""
        record = await self._records.get(event.provider_object_id)
        if record is None or self._busy(record.id):
            return False
        status = "stopped" if event.exit_code == 0 else "failed"
        error = None if status == "stopped" else f"the entry command exited with status {event.exit_code}"
        if not await self._records.change_status(record.id, ("running", "warm"), status, error=error):
            return False
        tail = self._redactor.scrub(event.output_tail[-TAIL_CHARS:])
        await self._records.add_event(record.id, "exited", exit_code=event.exit_code, status=status, output=tail)
        log.info("sandbox.exited", sandbox_id=record.id, exit_code=event.exit_code, status=status)
        return True
