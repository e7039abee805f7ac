"""Daytona's sandbox lifecycle on our sandboxes and snapshots (no second sandbox model).

A Daytona sandbox *is* one of our sandboxes: its Daytona id and name are our
sandbox id. What Daytona knows and our records have no column for travels as
reserved labels (``sandbox-control.daytona.*``), hidden from the labels the
Daytona API shows. A caller's own labels under our reserved prefix (another
sandbox-control using this one as its Daytona provider sets them) are kept
escaped (``sandbox-control.daytona.u.*``) and shown back as given: they never
pose as the service's own (a pool's, say).

Lifecycle intervals (minutes, as Daytona counts them):

- ``ttlMinutes`` > 0: our TTL (``ttl_seconds``), wall clock from creation.
- ``autoDeleteInterval`` 0 (the SDK's ``ephemeral``: "delete as soon as it
  stops"): ``stop`` deletes the sandbox. N > 0: a stop sets the TTL reaper's
  ``expires_at`` to N minutes later (or the creation TTL, if sooner); ``start``
  puts the creation TTL back. Negative or absent: off.
- ``autoStopInterval`` and ``autoArchiveInterval``: recorded and reported, not
  enforced: the service has no idle detection, and no archive tier (a stopped
  sandbox keeps its filesystem until it is deleted).

Snapshots: a Daytona snapshot is one of our snapshots, named by its id or by
the name ``sandbox.create_snapshot(name)`` gave it (kept as its reason).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from pydantic import ValidationError

from app.errors import BadRequest, Conflict, SnapshotNotFound
from app.providers.base import Resources
from app.schemas.common import RESERVED_LABEL_PREFIX, SANDBOX_ID_PATTERN, validate_labels
from app.schemas.daytona import CreateSandbox, bad_request
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.sandboxes import SandboxService
from app.services.snapshots import SnapshotService
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.snapshots import SnapshotRecord
from app.storage.state.times import utcnow

_PREFIX = RESERVED_LABEL_PREFIX + "daytona."
AUTO_STOP = _PREFIX + "auto-stop"
AUTO_ARCHIVE = _PREFIX + "auto-archive"
AUTO_DELETE = _PREFIX + "auto-delete"
PUBLIC = _PREFIX + "public"
SNAPSHOT = _PREFIX + "snapshot"
INTERVALS = {"autostop": AUTO_STOP, "autoarchive": AUTO_ARCHIVE, "autodelete": AUTO_DELETE}
#: What Daytona's API answers when unset (its documented defaults).
DEFAULTS = {AUTO_STOP: 15, AUTO_ARCHIVE: 10080, AUTO_DELETE: -1}
#: A caller's own label under our reserved prefix is kept under this one instead, so it can never
#: pose as the service's (another sandbox-control using this one as its Daytona provider labels so).
_ESCAPED = _PREFIX + "u."
#: The reason our snapshot records carry for a Daytona snapshot name.
SNAPSHOT_REASON_PREFIX = "daytona:"


def minutes(record: SandboxRecord, key: str) -> int:
    """One of Daytona's intervals of ``record`` (its default when unset)."""
    value = record.labels.get(key)
    return int(value) if value is not None and value.lstrip("-").isdigit() else DEFAULTS[key]


def stored_labels(labels: dict[str, str]) -> dict[str, str]:
    """A caller's labels as the record keeps them (reserved-prefix keys escaped)."""
    return {
        (_ESCAPED + key.removeprefix(RESERVED_LABEL_PREFIX) if key.startswith(RESERVED_LABEL_PREFIX) else key): value
        for key, value in labels.items()
    }


def shown_labels(labels: dict[str, str]) -> dict[str, str]:
    """The caller's labels of a record (escaped ones restored; the service's own hidden)."""
    shown = {k: v for k, v in labels.items() if not k.startswith(RESERVED_LABEL_PREFIX)}
    for key, value in labels.items():
        if key.startswith(_ESCAPED):
            shown[RESERVED_LABEL_PREFIX + key.removeprefix(_ESCAPED)] = value
    return shown


def _split(labels: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A caller's labels: (plain ones, escaped reserved-prefix ones), each checked."""
    stored = stored_labels(labels)
    plain = {k: v for k, v in stored.items() if not k.startswith(RESERVED_LABEL_PREFIX)}
    escaped = {k: v for k, v in stored.items() if k.startswith(RESERVED_LABEL_PREFIX)}
    try:
        validate_labels(plain)
        validate_labels(escaped, allow_reserved=True)
    except ValueError as exc:
        raise BadRequest(f"labels: {exc}", field="labels") from None
    return plain, escaped


def snapshot_name(record: SnapshotRecord) -> str:
    reason = record.reason or ""
    return reason.removeprefix(SNAPSHOT_REASON_PREFIX) if reason.startswith(SNAPSHOT_REASON_PREFIX) else record.id


def image_of(body: CreateSandbox) -> str | None:
    """The image a ``buildInfo`` names: only a bare ``FROM <image>`` (no build steps) can be served."""
    if body.build_info is None:
        return None
    lines = [line.strip() for line in body.build_info.dockerfile_content.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].upper().startswith("FROM ") or body.build_info.context_hashes:
        raise BadRequest(
            "buildInfo: building images from Dockerfile steps is not supported by this service; "
            "create from a plain image (a string or Image.base(...))",
            field="buildInfo",
        )
    return lines[0][5:].strip().split(" ")[0]


def _refuse_unsupported(body: CreateSandbox) -> None:
    """Fields with no counterpart here are refused by name when set, never dropped."""
    given = {
        "user": bool(body.user),
        "volumes": bool(body.volumes),
        "secrets": bool(body.secrets),
        "kvm": bool(body.kvm),
        "networkAllowList": bool(body.network_allow_list),
        "domainAllowList": bool(body.domain_allow_list),
        "autoPauseInterval": bool(body.auto_pause_interval),
    }
    for field, present in given.items():
        if present:
            raise BadRequest(f"{field} is not supported by this service", field=field)


def create_request(body: CreateSandbox, image: str | None) -> tuple[CreateSandboxRequest, dict[str, str]]:
    """Our create request, and the reserved labels that carry Daytona's extra fields."""
    _refuse_unsupported(body)
    if body.name is not None and not re.match(SANDBOX_ID_PATTERN, body.name):
        raise BadRequest("name: letters, digits and ._- only (at most 128), starting with a letter or digit")
    plain, escaped = _split(body.labels)
    try:
        request = CreateSandboxRequest(
            sandbox_id=body.name or None,
            image=image,
            env=body.env,
            labels=plain,
            resources=Resources(
                cpu=body.cpu,
                memory_mb=body.memory * 1024 if body.memory else None,
                disk_mb=body.disk * 1024 if body.disk else None,
                gpu="any" if body.gpu else None,
            ),
            ttl_seconds=body.ttl_minutes * 60 if body.ttl_minutes else None,
            network="none" if body.network_block_all else None,
        )
    except ValidationError as exc:
        raise bad_request(exc) from None
    intervals = {AUTO_STOP: body.auto_stop_interval, AUTO_ARCHIVE: body.auto_archive_interval}
    intervals[AUTO_DELETE] = body.auto_delete_interval
    labels = {key: str(value) for key, value in intervals.items() if value is not None}
    labels.update(escaped)
    if body.public:
        labels[PUBLIC] = "true"
    return request, labels


class DaytonaSandboxes:
    """Create, stop, start and relabel sandboxes the way Daytona's API means it."""

    def __init__(self, sandboxes: SandboxService, snapshots: SnapshotService, records: SandboxStore) -> None:
        self._sandboxes = sandboxes
        self._snapshots = snapshots
        self._records = records

    async def create(self, body: CreateSandbox) -> SandboxRecord:
        """From a snapshot of ours (by id or Daytona name), an image, or the default image."""
        request, labels = create_request(body, image_of(body))
        if body.snapshot and body.build_info is None:
            snapshot = await self.find_snapshot(body.snapshot)
            labels[SNAPSHOT] = snapshot_name(snapshot)[:256]
            return await self._snapshots.restore(snapshot.id, request, service_labels=labels)
        return await self._sandboxes.create(request, service_labels=labels)

    async def find_snapshot(self, name: str) -> SnapshotRecord:
        """A ready snapshot by Daytona name (the newest of that name) or by our id."""
        named = [
            s for s in await self._snapshots.list() if s.status == "ready" and s.reason == SNAPSHOT_REASON_PREFIX + name
        ]
        if named:
            return max(named, key=lambda s: s.created_at)
        try:
            return await self._snapshots.get(name)
        except (SnapshotNotFound, BadRequest):
            raise SnapshotNotFound(f"snapshot {name!r} not found", snapshot_id=name) from None

    async def snapshot(self, any_id: str, name: str) -> SnapshotRecord:
        """``sandbox.create_snapshot(name)``: a snapshot of the sandbox's files, found later by ``name``."""
        return await self._snapshots.snapshot(any_id, reason=SNAPSHOT_REASON_PREFIX + name)

    async def stop(self, any_id: str) -> SandboxRecord:
        """Stop; an ``autoDeleteInterval`` of 0 deletes instead, N > 0 schedules the delete."""
        record = await self._sandboxes.get(any_id)
        after = minutes(record, AUTO_DELETE)
        if after == 0:
            return await self._sandboxes.delete(record.id)
        stopped = await self._sandboxes.stop(record.id)
        if after > 0:
            expiry = utcnow() + timedelta(minutes=after)
            if stopped.expires_at is not None:
                expiry = min(expiry, stopped.expires_at)
            return await self._set_expiry(stopped, expiry)
        return stopped

    async def start(self, any_id: str) -> SandboxRecord:
        """Start (a running sandbox is left as it is); the creation TTL applies again."""
        record = await self._sandboxes.get(any_id)
        if record.status == "running":
            return record
        started = await self._sandboxes.start(record.id)
        if minutes(started, AUTO_DELETE) > 0:
            ttl = started.ttl_seconds
            return await self._set_expiry(started, started.created_at + timedelta(seconds=ttl) if ttl else None)
        return started

    async def recover(self, any_id: str) -> SandboxRecord:
        """Daytona's recover: nothing here is recoverable from ``error``; otherwise it starts."""
        record = await self._sandboxes.get(any_id)
        if record.status == "failed":
            raise BadRequest(
                f"sandbox {record.id!r} failed ({record.error or 'unknown reason'}); it is not recoverable"
            )
        return await self.start(record.id)

    async def _set_expiry(self, record: SandboxRecord, expires_at: datetime | None) -> SandboxRecord:
        return await self._records.update(record.id, expires_at=expires_at) or record

    async def set_labels(self, any_id: str, labels: dict[str, str]) -> SandboxRecord:
        """Replace the caller's labels; the service's own (reserved) labels stay."""
        plain, escaped = _split(labels)
        record = await self._sandboxes.get(any_id)
        ours = {
            k: v for k, v in record.labels.items() if k.startswith(RESERVED_LABEL_PREFIX) and not k.startswith(_ESCAPED)
        }
        return await self._records.replace_labels(record.id, {**plain, **escaped, **ours}) or record

    async def set_label(self, any_id: str, key: str, value: str) -> SandboxRecord:
        """Set one reserved label (an interval, ``public``)."""
        if not key.startswith(_PREFIX):
            raise Conflict(f"label {key!r} is not one of the Daytona API's")
        record = await self._sandboxes.get(any_id)
        return await self._records.replace_labels(record.id, {**record.labels, key: value}) or record
