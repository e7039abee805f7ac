"""The durable outbox: write-ahead for critical events, bounded, replayable after a crash."""

from __future__ import annotations

from pathlib import Path

from sandbox_runtime.bridge.buffer import DurableOutbox


def _types(outbox: DurableOutbox) -> list[str]:
    return [e.event["type"] for e in outbox.pending()]


def test_critical_events_survive_a_restart_until_acked(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    first = DurableOutbox(path)
    first.load()
    live, _ = first.add({"type": "token"}, critical=False, durable=False)
    done, _ = first.add({"type": "execution_complete"}, critical=True, durable=False)
    assert done.event["ackId"] == done.entry_id and "ackId" not in live.event

    second = DurableOutbox(path)  # a crash: only what was durable comes back
    assert second.load() == 1 and _types(second) == ["execution_complete"]
    assert second.pending()[0].event["ackId"] == done.entry_id
    assert second.complete(done.entry_id) and not second.complete(done.entry_id)
    assert DurableOutbox(path).load() == 0


def test_disconnected_events_are_durable_and_persist_all_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = DurableOutbox(path)
    outbox.add({"type": "token", "n": 1}, critical=False, durable=False)  # in memory only
    outbox.add({"type": "error"}, critical=True, durable=False)  # on disk
    outbox.add({"type": "token", "n": 2}, critical=False, durable=True)  # disconnected: on disk
    assert outbox.persist_all() == 1
    replay = DurableOutbox(path)
    replay.load()
    assert [e.event.get("n", e.event["type"]) for e in replay.pending()] == [1, "error", 2]


def test_bound_drops_oldest_non_critical_first(tmp_path: Path) -> None:
    outbox = DurableOutbox(tmp_path / "outbox.jsonl", max_entries=3)
    outbox.add({"type": "token", "n": 1}, critical=False, durable=True)
    outbox.add({"type": "error"}, critical=True, durable=True)
    outbox.add({"type": "token", "n": 2}, critical=False, durable=True)
    _, dropped = outbox.add({"type": "execution_complete"}, critical=True, durable=True)
    assert [d.event.get("n") for d in dropped] == [1]
    _, dropped = outbox.add({"type": "token", "n": 3}, critical=False, durable=True)
    assert [d.event.get("n") for d in dropped] == [2]
    _, dropped = outbox.add({"type": "push_complete"}, critical=True, durable=True)
    assert [d.event["type"] for d in dropped] == ["token"]
    _, dropped = outbox.add({"type": "push_error"}, critical=True, durable=True)
    assert [d.event["type"] for d in dropped] == ["error"], "only critical left: the oldest goes"
    reloaded = DurableOutbox(tmp_path / "outbox.jsonl", max_entries=3)
    reloaded.load()
    assert _types(reloaded) == ["execution_complete", "push_complete", "push_error"]
    assert outbox.dropped == 4


def test_torn_last_line_is_ignored_and_the_file_compacts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    outbox = DurableOutbox(path, max_entries=2)
    kept, _ = outbox.add({"type": "error"}, critical=True, durable=True)
    for _ in range(20):
        entry, _ = outbox.add({"type": "token"}, critical=False, durable=True)
        outbox.complete(entry.entry_id)
    assert len(path.read_text().splitlines()) < 20, "compacted while appending"
    with path.open("ab") as fh:
        fh.write(b'{"add": {"id": "torn", "crit')
    again = DurableOutbox(path)
    assert again.load() == 1 and again.pending()[0].entry_id == kept.entry_id
    assert len(path.read_text().splitlines()) == 1
