"""Our sandboxes and snapshots in Daytona's wire shapes (``Sandbox``, ``SnapshotDto``).

States, ours -> Daytona: ``creating`` -> ``creating``, ``running`` ->
``started``, ``stopped`` -> ``stopped``, ``failed`` -> ``error`` (reported not
recoverable), ``deleted`` -> ``destroyed``, anything else -> ``unknown``.
Resources: cpu in cores (rounded up), memory and disk in GiB (rounded up).
Env values are never kept by the service, so ``env`` is always empty.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from app.services.daytona_sandboxes import (
    AUTO_ARCHIVE,
    AUTO_DELETE,
    AUTO_STOP,
    PUBLIC,
    SNAPSHOT,
    minutes,
    shown_labels,
    snapshot_name,
)
from app.storage.state.sandboxes import SandboxRecord
from app.storage.state.snapshots import SnapshotRecord

STATES = {
    "creating": "creating",
    "running": "started",
    "stopped": "stopped",
    "failed": "error",
    "deleted": "destroyed",
    "deleting": "destroying",
}
#: Daytona states named in a list filter -> ours.
STATE_FILTER = {daytona: ours for ours, daytona in STATES.items()}
SNAPSHOT_STATES = {"creating": "building", "ready": "active", "failed": "error"}
#: The one organisation every sandbox belongs to here (the SDK expects an id).
ORGANIZATION = "sandbox-control"
USER = "sandbox"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sandbox_dto(record: SandboxRecord, toolbox_url: str) -> dict[str, Any]:
    """Daytona's ``Sandbox`` for one of our sandboxes."""
    resources = record.resources or {}
    cpu, memory_mb, disk_mb = resources.get("cpu"), resources.get("memory_mb"), resources.get("disk_mb")
    state = STATES.get(record.status, "unknown")
    return {
        "id": record.id,
        "organizationId": ORGANIZATION,
        "name": record.id,
        "snapshot": record.labels.get(SNAPSHOT) or record.image,
        "user": USER,
        "env": {},
        "labels": shown_labels(record.labels),
        "public": record.labels.get(PUBLIC) == "true",
        "networkBlockAll": record.network == "none",
        "kvm": False,
        "target": record.provider,
        "cpu": math.ceil(cpu) if cpu else 1,
        "gpu": 1 if resources.get("gpu") else 0,
        "memory": math.ceil(memory_mb / 1024) if memory_mb else 1,
        "disk": math.ceil(disk_mb / 1024) if disk_mb else 0,
        "state": state,
        "errorReason": record.error if state == "error" else None,
        "recoverable": False,
        "autoStopInterval": minutes(record, AUTO_STOP),
        "autoArchiveInterval": minutes(record, AUTO_ARCHIVE),
        "autoDeleteInterval": minutes(record, AUTO_DELETE),
        "autoDestroyAt": _iso(record.expires_at),
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "toolboxProxyUrl": toolbox_url,
    }


def snapshot_dto(record: SnapshotRecord) -> dict[str, Any]:
    """Daytona's ``SnapshotDto`` for one of our snapshots (a workspace archive, restorable anywhere)."""
    return {
        "id": record.id,
        "organizationId": ORGANIZATION,
        "general": False,
        "name": snapshot_name(record),
        "imageName": None,
        "state": SNAPSHOT_STATES.get(record.status, "error"),
        "size": round(record.size_bytes / (1 << 30), 3) if record.size_bytes else None,
        "entrypoint": None,
        "cpu": 1,
        "gpu": 0,
        "mem": 1,
        "disk": 0,
        "errorReason": record.error,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "lastUsedAt": None,
        "sourceSandboxId": record.sandbox_id,
    }
