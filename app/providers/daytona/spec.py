"""Translating our ``SandboxSpec`` to Daytona create parameters, and Daytona records back.

``create_params`` is the one place where our request model becomes Daytona's:
provider defaults (``DaytonaDefaults``) are merged under the per-request
fields, units are converted (Daytona counts whole vCPUs and whole GiB, each
at least 1) and anything Daytona cannot honour is refused with
``UnsupportedSpec`` naming the field. ``describe`` turns a Daytona record into
a ``ProviderSandbox`` whose ``resources`` are what Daytona actually allocated.

Our own bookkeeping lives in labels under ``sandbox-control.``; callers only
ever see their own labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams
from daytona import Resources as DaytonaResources

from app.errors import BadRequest, UnsupportedSpec
from app.providers.base import ProviderSandbox, ProviderStatus, Resources, SandboxSpec

log = logging.getLogger(__name__)

PROVIDER = "daytona"
#: ``image`` values with this prefix name a Daytona snapshot instead of an OCI image.
SNAPSHOT_PREFIX = "daytona-snapshot:"
LABEL_PREFIX = "sandbox-control."
MANAGED_LABEL = LABEL_PREFIX + "managed"
SCOPE_LABEL = LABEL_PREFIX + "scope"
SANDBOX_ID_LABEL = LABEL_PREFIX + "sandbox-id"
#: Present when the sandbox runs an entry command (relaunched by ``start``).
ENTRY_LABEL = LABEL_PREFIX + "entry"
#: Label the SDK adds to every sandbox it creates; not the caller's.
SDK_LANGUAGE_LABEL = "code-toolbox-language"

_RUNNING = {"started", "starting", "creating", "restoring", "resuming", "resizing", "snapshotting", "forking"}
_RUNNING |= {"pending_build", "building_snapshot", "pulling_snapshot"}
_STOPPED = {"stopped", "stopping", "archived", "archiving", "paused", "pausing"}
_FAILED = {"error", "build_failed"}
#: States in which the sandbox is gone (or going) for good: ``SandboxNotFound``.
GONE = {"destroyed", "destroying"}


@dataclass(frozen=True)
class DaytonaDefaults:
    """Provider-side defaults, merged under each request.

    The intervals are Daytona's cost controls, in minutes. The service's own
    reaper (``ttl_seconds``) stays the primary lifetime control; these are the
    backstop when the service is down or forgets a sandbox.
    """

    #: Stop after this many idle minutes (Daytona's activity clock; 0 = never).
    auto_stop_minutes: int = 30
    #: Move a stopped sandbox to cheap archive storage after this many minutes.
    auto_archive_minutes: int = 24 * 60
    #: Delete a stopped sandbox after this many minutes; negative = never (the service deletes).
    auto_delete_minutes: int = -1
    #: Largest disk a sandbox may ask for, GiB (Daytona's per-sandbox default maximum).
    max_disk_gib: int = 10
    #: Seconds allowed for create (building an image into a snapshot can be slow).
    create_timeout: float = 600.0


@dataclass(frozen=True)
class CreatePlan:
    """What ``create`` sends, and the effective resources it will report."""

    params: CreateSandboxFromImageParams | CreateSandboxFromSnapshotParams
    image: str | None


def sandbox_name(scope: str, sandbox_id: str) -> str:
    """A deterministic name, so a retried create finds the sandbox its first try made."""
    return f"sc-{scope}-{sandbox_id}"[:63]


def whole_units(value: float, per_unit: float) -> int:
    """``value`` in whole units of ``per_unit``, rounded up, at least 1 (Daytona's granularity)."""
    return max(1, math.ceil(value / per_unit))


def create_params(spec: SandboxSpec, *, base_image: str | None, scope: str, defaults: DaytonaDefaults) -> CreatePlan:
    """Map ``spec`` onto Daytona create parameters (see the module docstring).

    Raises:
        UnsupportedSpec: a network, resource or image Daytona cannot honour.
        BadRequest: malformed env names or labels in our reserved namespace.
    """
    if spec.network not in (None, "host", "none"):
        raise UnsupportedSpec("network", PROVIDER, "only 'host' (Daytona's default network) and 'none' exist")
    for name in spec.env:
        if not name or "=" in name or "\0" in name:
            raise BadRequest(f"invalid environment variable name: {name!r}", field="env")
    reserved = [key for key in spec.labels if key.startswith(LABEL_PREFIX) or key == SDK_LANGUAGE_LABEL]
    if reserved:
        raise BadRequest(f"labels may not use the reserved names {reserved}", field="labels")
    if spec.resources.pids is not None:
        # Daytona has no process-count limit; the effective value says so (None).
        log.warning("daytona provider: resources.pids=%d is not enforced by Daytona", spec.resources.pids)

    labels = {**spec.labels, MANAGED_LABEL: "true", SCOPE_LABEL: scope, SANDBOX_ID_LABEL: spec.sandbox_id}
    if spec.command is not None:
        labels[ENTRY_LABEL] = "1"
    common: dict[str, Any] = {
        "name": sandbox_name(scope, spec.sandbox_id),
        "env_vars": dict(spec.env),
        "labels": labels,
        "public": False,
        "network_block_all": spec.network == "none",
        "auto_stop_interval": defaults.auto_stop_minutes,
        "auto_archive_interval": defaults.auto_archive_minutes,
        "auto_delete_interval": defaults.auto_delete_minutes,
    }
    if spec.ttl_seconds is not None:
        # Wall-clock lifetime enforced by Daytona itself, even while stopped.
        common["ttl_minutes"] = whole_units(spec.ttl_seconds, 60)

    image = spec.image or base_image
    if image and image.startswith(SNAPSHOT_PREFIX):
        snapshot = image.removeprefix(SNAPSHOT_PREFIX)
        if not snapshot:
            raise BadRequest(f"image {image!r} names no snapshot", field="image")
        asked = [name for name, value in spec.resources.model_dump().items() if value is not None and name != "pids"]
        if asked:
            raise UnsupportedSpec(f"resources.{asked[0]}", PROVIDER, "a Daytona snapshot fixes its own resources")
        return CreatePlan(CreateSandboxFromSnapshotParams(snapshot=snapshot, **common), image)
    if not image:
        # Daytona's default snapshot; its resources are the platform defaults.
        return CreatePlan(CreateSandboxFromSnapshotParams(**common), None)
    resources = daytona_resources(spec.resources, defaults)
    return CreatePlan(CreateSandboxFromImageParams(image=image, resources=resources, **common), image)


def daytona_resources(asked: Resources, defaults: DaytonaDefaults) -> DaytonaResources | None:
    """Our resource request in Daytona's units; ``None`` = platform defaults."""
    if asked.disk_mb is not None and asked.disk_mb > defaults.max_disk_gib * 1024:
        raise UnsupportedSpec(
            "resources.disk_mb",
            PROVIDER,
            f"{asked.disk_mb} MB exceeds Daytona's per-sandbox maximum of {defaults.max_disk_gib} GiB",
        )
    if all(value is None for value in (asked.cpu, asked.memory_mb, asked.disk_mb, asked.gpu)):
        return None
    gpu_type: list[Any] | None = None
    if asked.gpu is not None and asked.gpu != "any":
        gpu_type = [asked.gpu]
    return DaytonaResources(
        cpu=whole_units(asked.cpu, 1) if asked.cpu is not None else None,
        memory=whole_units(asked.memory_mb, 1024) if asked.memory_mb is not None else None,
        disk=whole_units(asked.disk_mb, 1024) if asked.disk_mb is not None else None,
        gpu=1 if asked.gpu is not None else None,
        gpu_type=gpu_type,
    )


def state_name(record: Any) -> str:
    """The Daytona state of a sandbox record as a plain lower-case string."""
    state = getattr(record, "state", None)
    value = getattr(state, "value", state)
    return str(value or "unknown").lower()


def status_of_state(state: str) -> ProviderStatus:
    """Our status for a Daytona state (transitional states read as where they are heading)."""
    if state in _FAILED:
        return "failed"
    if state in _STOPPED:
        return "stopped"
    if state in _RUNNING:
        return "running"
    return "failed"  # unknown: never report a sandbox we do not understand as usable


def user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's labels, without our bookkeeping and the SDK's."""
    return {k: v for k, v in (labels or {}).items() if not k.startswith(LABEL_PREFIX) and k != SDK_LANGUAGE_LABEL}


def describe(record: Any, status: ProviderStatus, image: str | None = None) -> ProviderSandbox:
    """A ``ProviderSandbox`` from a Daytona sandbox record (SDK object or API model)."""
    labels = dict(getattr(record, "labels", None) or {})
    gpu = getattr(record, "gpu", None)
    created = getattr(record, "created_at", None)
    return ProviderSandbox(
        provider_object_id=str(record.id),
        status=status,
        labels=user_labels(labels),
        image=image or getattr(record, "snapshot", None),
        created_at=_parse_time(created),
        resources=Resources(
            cpu=_positive(getattr(record, "cpu", None)),
            memory_mb=_gib_to_mb(getattr(record, "memory", None)),
            disk_mb=_gib_to_mb(getattr(record, "disk", None)),
            gpu=str(gpu) if gpu else None,
        ),
    )


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _gib_to_mb(value: Any) -> int | None:
    return int(value * 1024) if isinstance(value, int | float) and value > 0 else None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None
