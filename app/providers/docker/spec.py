"""Translation between our sandbox model and the Engine's container model.

Pure functions, no I/O: the container config for a ``SandboxSpec`` (labels,
entry command, network, resources), and ``ProviderSandbox``/status from what
the Engine reports. The provider's labels (``sandbox-control.docker.*``) are
the contract with ``list``: ``sandbox-control.docker.managed=true`` marks
every container the provider created, ``...scope`` the provider instance
that owns it (when scoped), and the rest record what the Engine cannot tell
back (the logical id, ttl, requested resources).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from app.errors import BadRequest, UnsupportedSpec
from app.providers.base import ProviderSandbox, ProviderStatus, Resources, SandboxSpec, check_argv

PROVIDER = "docker"
#: Labels the provider owns. Every other label of the spec, including the
#: service's own ``sandbox-control.*`` ones, is stored and returned verbatim.
LABEL_PREFIX = "sandbox-control.docker."
MANAGED_LABEL = LABEL_PREFIX + "managed"
SANDBOX_ID_LABEL = LABEL_PREFIX + "sandbox-id"
SCOPE_LABEL = LABEL_PREFIX + "scope"
TTL_LABEL = LABEL_PREFIX + "ttl-seconds"
EXPIRES_LABEL = LABEL_PREFIX + "expires-at"
RESOURCES_LABEL = LABEL_PREFIX + "resources"
#: The keys of the spec's labels: a container also inherits its image's labels.
KEYS_LABEL = LABEL_PREFIX + "label-keys"
NAME_PREFIX = "sandbox-control-"

#: The working directory of sandboxes, and of their commands by default.
WORKSPACE = "/workspace"
#: Seconds between SIGTERM and SIGKILL on stop.
STOP_GRACE_SECONDS = 10
#: PID 1 when the spec has no command: sleeps, and exits at once on SIGTERM
#: (a bare ``sleep`` as PID 1 ignores it and costs the whole stop grace).
IDLE_COMMAND = ("sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 86400 & wait $!; done")
#: Exit codes of a main process ended by ``stop`` (clean, SIGKILL, SIGTERM).
_STOPPED_EXIT_CODES = frozenset({0, 137, 143})
#: Storage drivers whose ``StorageOpt size`` bounds the writable layer (overlay2 only on xfs).
_QUOTA_DRIVERS = frozenset({"btrfs", "zfs", "devicemapper", "windowsfilter"})
_NAME_OK = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_EXITED = re.compile(r"Exited \((-?\d+)\)")


def container_config(
    spec: SandboxSpec,
    image: str,
    network: str | None,
    engine_info: Mapping[str, Any] | None = None,
    *,
    scope: str | None = None,
) -> dict[str, Any]:
    """The ``POST /containers/create`` body for ``spec``.

    ``engine_info`` (``GET /info``) is needed only when disk or GPU limits are
    asked for; ``scope`` marks the container as this provider instance's.
    """
    labels = dict(spec.labels)
    for key in labels:
        if key.startswith(LABEL_PREFIX):
            raise BadRequest(f"label {key!r} uses the reserved prefix {LABEL_PREFIX!r}", field="labels")
    labels[KEYS_LABEL] = json.dumps(sorted(labels), separators=(",", ":"))
    labels[MANAGED_LABEL] = "true"
    labels[SANDBOX_ID_LABEL] = spec.sandbox_id
    if scope:
        labels[SCOPE_LABEL] = scope
    labels[RESOURCES_LABEL] = spec.resources.model_dump_json(exclude_none=True)
    if spec.ttl_seconds:
        labels[TTL_LABEL] = str(spec.ttl_seconds)
        labels[EXPIRES_LABEL] = (datetime.now(UTC) + timedelta(seconds=spec.ttl_seconds)).isoformat()
    env = []
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise BadRequest(f"invalid environment variable name or value: {key!r}", field="env")
        env.append(f"{key}={value}")
    if spec.command is not None:
        check_argv(spec.command)
    if network is not None and ":" in network:
        raise BadRequest(f"network must be 'host', 'none' or a network name, not {network!r}", field="network")
    host_config: dict[str, Any] = {
        "RestartPolicy": {"Name": "no"},
        "SecurityOpt": ["no-new-privileges"],
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
        **resource_config(spec.resources, engine_info or {}),
    }
    if network is not None:
        host_config["NetworkMode"] = network
    return {
        "Image": image,
        # Every provider's sandbox works in /workspace (the Engine creates it when the image lacks it).
        "WorkingDir": WORKSPACE,
        "Entrypoint": [],  # the command below is the whole entry, whatever the image says
        "Cmd": list(spec.command) if spec.command is not None else list(IDLE_COMMAND),
        "Env": env,
        "Labels": labels,
        "Tty": False,
        "OpenStdin": False,
        "StopTimeout": STOP_GRACE_SECONDS,
        "HostConfig": host_config,
    }


def engine_has_gpu(engine_info: Mapping[str, Any]) -> bool:
    """Whether the Engine has a GPU runtime (the NVIDIA container runtime)."""
    return "nvidia" in (engine_info.get("Runtimes") or {})


def resource_config(resources: Resources, engine_info: Mapping[str, Any]) -> dict[str, Any]:
    """HostConfig fields for ``resources``; ``UnsupportedSpec`` for what the Engine cannot bound."""
    config: dict[str, Any] = {}
    if resources.cpu is not None:
        config["NanoCpus"] = int(resources.cpu * 1e9)
    if resources.memory_mb is not None:
        config["Memory"] = resources.memory_mb << 20
        config["MemorySwap"] = resources.memory_mb << 20  # no swap beyond the limit
    if resources.pids is not None:
        config["PidsLimit"] = resources.pids
    if resources.disk_mb is not None:
        reason = disk_quota_unsupported(engine_info)
        if reason:
            raise UnsupportedSpec("resources.disk_mb", PROVIDER, reason)
        config["StorageOpt"] = {"size": f"{resources.disk_mb}M"}
    if resources.gpu is not None:
        if not engine_has_gpu(engine_info):
            raise UnsupportedSpec("resources.gpu", PROVIDER, "the Docker Engine has no GPU (nvidia) runtime")
        count = -1 if resources.gpu == "all" else int(resources.gpu) if resources.gpu.isdigit() else 1
        config["DeviceRequests"] = [{"Driver": "", "Count": count, "Capabilities": [["gpu"]]}]
    return config


def container_name(sandbox_id: str) -> str:
    """A valid, unique container name for ``sandbox_id`` (a hash suffix when it had to change)."""
    cleaned = re.sub(r"[^a-zA-Z0-9_.-]", "-", sandbox_id)[:100]
    if cleaned != sandbox_id or not _NAME_OK.fullmatch(NAME_PREFIX + cleaned):
        cleaned = f"{cleaned}-{hashlib.sha256(sandbox_id.encode()).hexdigest()[:10]}"
    return NAME_PREFIX + cleaned


def split_image_reference(image: str) -> tuple[str, str]:
    """``repo[:tag][@digest]`` → (repo, tag or digest); no tag means ``latest``, as the CLI does."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = image.rpartition(":")
        return repo, tag
    return image, "latest"


def disk_quota_unsupported(info: Mapping[str, Any]) -> str | None:
    """Why this engine cannot bound a container's disk, or ``None`` when it can."""
    driver = str(info.get("Driver", ""))
    status = {str(k): str(v) for k, v in (info.get("DriverStatus") or [])}
    backing = status.get("Backing Filesystem", "")
    if driver in _QUOTA_DRIVERS or (driver.startswith("overlay") and backing == "xfs"):
        return None
    return (
        f"storage driver {driver or 'unknown'} on {backing or 'an unknown filesystem'} cannot limit a "
        "container's disk (needs overlay2 on xfs mounted with pquota, btrfs or zfs)"
    )


def _status_of(state: str, exit_code: int | None, failed: bool = False) -> ProviderStatus:
    if state in ("running", "restarting"):
        return "running"
    if failed or state in ("dead", "removing"):
        return "failed"
    if state == "exited" and exit_code is not None and exit_code not in _STOPPED_EXIT_CODES:
        return "failed"  # the entry command died on its own
    return "stopped"  # created, paused, or ended by stop


def status_of_container(info: Mapping[str, Any]) -> ProviderStatus:
    state = info.get("State") or {}
    failed = bool(state.get("OOMKilled")) or bool(state.get("Error"))
    return _status_of(str(state.get("Status", "")), state.get("ExitCode"), failed)


def _user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The spec's labels back: not ours, and not those inherited from the image."""
    labels = labels or {}
    try:
        keys = json.loads(labels[KEYS_LABEL])
    except (KeyError, ValueError):
        return {k: v for k, v in labels.items() if not k.startswith(LABEL_PREFIX)}
    return {k: labels[k] for k in keys if isinstance(k, str) and k in labels}


def _resources(labels: Mapping[str, str] | None) -> Resources:
    try:
        return Resources.model_validate_json((labels or {}).get(RESOURCES_LABEL) or "{}")
    except ValidationError:
        return Resources()


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    # The Engine writes nanoseconds; datetime takes microseconds.
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(trimmed)
    except ValueError:
        return None


def sandbox_from_inspect(info: Mapping[str, Any]) -> ProviderSandbox:
    config = info.get("Config") or {}
    labels = config.get("Labels") or {}
    return ProviderSandbox(
        provider_object_id=str(info["Id"]),
        status=status_of_container(info),
        labels=_user_labels(labels),
        image=config.get("Image"),
        created_at=_parse_time(info.get("Created")),
        resources=_resources(labels),
    )


def sandbox_from_summary(item: Mapping[str, Any]) -> ProviderSandbox:
    labels = item.get("Labels") or {}
    match = _EXITED.search(str(item.get("Status", "")))
    created = item.get("Created")
    return ProviderSandbox(
        provider_object_id=str(item["Id"]),
        status=_status_of(str(item.get("State", "")), int(match.group(1)) if match else None),
        labels=_user_labels(labels),
        image=item.get("Image"),
        created_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int | float) else None,
        resources=_resources(labels),
    )
