"""Entry commands of local sandboxes that end on their own, noticed within a poll interval.

The keeper records bwrap's exit status (``init.exit``) and the entry command's
output (``init.log``) beside the sandbox; a stop through the provider marks the
init record first (``stop_requested``). So an init seen alive and then found
dead without that mark is an entry command that ended by itself: reported once,
with its exit status and the end of its output.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.providers.base import ExitEvent
from app.providers.local import procs
from app.providers.local.init import output_tail
from app.providers.local.store import LocalStore

#: Seconds between two looks at every init (a look is a stat per sandbox).
POLL_SECONDS = 0.25


class ExitWatch:
    """Polls the inits of one data dir's sandboxes."""

    def __init__(self, store: LocalStore, interval: float = POLL_SECONDS) -> None:
        self._store = store
        self._interval = interval
        #: Inits seen alive: (ref, pid, start time).
        self._alive: set[tuple[str, int, int]] = set()

    async def events(self) -> AsyncIterator[ExitEvent]:
        """Exit events as they happen, until cancelled."""
        while True:
            for event in await asyncio.to_thread(self._scan):
                yield event
            await asyncio.sleep(self._interval)

    def _scan(self) -> list[ExitEvent]:
        events = []
        seen: set[tuple[str, int, int]] = set()
        for meta in self._store.all_metas():
            record = self._store.load_init(meta.ref)
            if record is None:
                continue
            key = (meta.ref, record.pid, record.start_time)
            if procs.is_alive(record.stamp):
                seen.add(key)
            elif key in self._alive and not record.stop_requested:
                code = self._store.init_exit_status(meta.ref)
                tail = output_tail(self._store.paths(meta.ref).init_log)
                events.append(ExitEvent(meta.ref, code, tail))
        self._alive = seen
        return events
