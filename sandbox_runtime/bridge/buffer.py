"""The bridge's durable, bounded event outbox (append-only JSON lines, fsync'd).

Two kinds of records, one per line::

    {"add": {"id": "<entry id>", "critical": true, "event": {...}}}
    {"done": "<entry id>"}          # acked (critical), sent (non-critical) or dropped

Replaying the file yields the pending entries in production order. A crash can
leave a torn last line; it is skipped. The file is compacted (rewritten with
only pending entries, then atomically renamed) on load and whenever it holds
many more records than pending entries.

What is written when:

* critical events always, *before* they are first sent (write-ahead), so an event
  the control plane has not acked survives a bridge crash or restart;
* non-critical events only while disconnected (or when a connection drops with
  them unsent): live token streams do not pay an fsync per token.

The bound counts pending entries; past it, the oldest non-critical entry is dropped
first, and a critical one only when nothing else is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OutboxEntry:
    """One pending event; critical entries carry their id as ``event["ackId"]``."""

    entry_id: str
    event: dict[str, Any]
    critical: bool
    durable: bool = False
    sent_at: float | None = field(default=None, compare=False)


class DurableOutbox:
    """Pending events in order, mirrored to ``path`` as described in the module docstring."""

    def __init__(self, path: Path, *, max_entries: int = 1000) -> None:
        self.path = path
        self.max_entries = max_entries
        self._entries: OrderedDict[str, OutboxEntry] = OrderedDict()
        self._records = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self) -> list[OutboxEntry]:
        """Pending entries, oldest first (a copy: callers may complete entries while iterating)."""
        return list(self._entries.values())

    def get(self, entry_id: str) -> OutboxEntry | None:
        """The pending entry ``entry_id``, if any."""
        return self._entries.get(entry_id)

    # --- disk -----------------------------------------------------------------------------

    def load(self) -> int:
        """Replay the file (if any), compact it, and return the number of pending entries."""
        self._entries.clear()
        if self.path.exists():
            with self.path.open("rb") as fh:
                for raw in fh:
                    self._replay(raw)
        for entry in self._entries.values():
            entry.durable = True
        self._compact()
        return len(self._entries)

    def _replay(self, raw: bytes) -> None:
        try:
            record = json.loads(raw)
        except ValueError:
            return  # a torn write from a crash: the entry was never acknowledged as stored
        if not isinstance(record, dict):
            return
        added = record.get("add")
        if isinstance(added, dict) and isinstance(added.get("id"), str) and isinstance(added.get("event"), dict):
            entry_id = added["id"]
            self._entries[entry_id] = OutboxEntry(entry_id, added["event"], bool(added.get("critical")))
        elif isinstance(record.get("done"), str):
            self._entries.pop(record["done"], None)

    def _append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._records += len(records)
        if self._records > 4 * self.max_entries and self._records > 4 * len(self._entries):
            self._compact()

    def _compact(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            for entry in self._entries.values():
                if entry.durable:
                    fh.write(json.dumps({"add": self._add_record(entry)}, separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._records = sum(1 for e in self._entries.values() if e.durable)

    @staticmethod
    def _add_record(entry: OutboxEntry) -> dict[str, Any]:
        return {"id": entry.entry_id, "critical": entry.critical, "event": entry.event}

    # --- operations -----------------------------------------------------------------------

    def add(self, event: dict[str, Any], *, critical: bool, durable: bool) -> tuple[OutboxEntry, list[OutboxEntry]]:
        """Append an event; returns the new entry and any entries dropped to respect the bound.

        Critical events are always durable and get ``event["ackId"]``.
        """
        entry_id = uuid.uuid4().hex
        if critical:
            event = {**event, "ackId": entry_id}
        entry = OutboxEntry(entry_id, event, critical, durable=durable or critical)
        dropped = self._make_room()
        self._entries[entry_id] = entry
        records: list[dict[str, Any]] = [{"done": d.entry_id} for d in dropped if d.durable]
        if entry.durable:
            records.append({"add": self._add_record(entry)})
        self._append(records)
        return entry, dropped

    def _make_room(self) -> list[OutboxEntry]:
        dropped: list[OutboxEntry] = []
        while len(self._entries) >= self.max_entries:
            victim = next((e for e in self._entries.values() if not e.critical), None)
            if victim is None:
                victim = next(iter(self._entries.values()))
            del self._entries[victim.entry_id]
            dropped.append(victim)
        self.dropped += len(dropped)
        return dropped

    def complete(self, entry_id: str) -> bool:
        """Remove a pending entry (acked, or sent if non-critical); False if unknown."""
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return False
        if entry.durable:
            self._append([{"done": entry_id}])
        return True

    def persist_all(self) -> int:
        """Write every not-yet-durable pending entry (connection lost, snapshot, shutdown)."""
        fresh = [e for e in self._entries.values() if not e.durable]
        if fresh:
            for entry in fresh:
                entry.durable = True
            # Rewrite rather than append so the file keeps production order (tokens
            # before the execution_complete that followed them).
            self._compact()
        return len(fresh)

    def mark_all_unsent(self) -> None:
        """A new connection: every pending entry must be (re)sent."""
        for entry in self._entries.values():
            entry.sent_at = None
