"""Our ``SandboxSpec`` in Modal's terms: one mapping function, plus the tags we keep.

``create_plan`` is the only place a request becomes ``Sandbox.create``
arguments: provider defaults (``ModalDefaults``) sit under the per-request
values, anything Modal cannot honour is refused with ``UnsupportedSpec``
naming the field, and the *effective* resources are what the caller gets back.

Tags carry what ``list`` needs to rebuild a ``ProviderSandbox`` without a
state store: the spec's labels verbatim, and ours under ``sandbox-control.``
(managed flag, scope, sandbox id, image, effective resources, created_at).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.errors import BadRequest, UnsupportedSpec
from app.provider_settings import ModalSettings
from app.providers.base import ProviderSandbox, ProviderStatus, Resources, SandboxSpec, check_argv

PROVIDER = "modal"
TAG_PREFIX = "sandbox-control."
MANAGED_TAG = f"{TAG_PREFIX}managed"
SCOPE_TAG = f"{TAG_PREFIX}scope"
SANDBOX_ID_TAG = f"{TAG_PREFIX}sandbox-id"
IMAGE_TAG = f"{TAG_PREFIX}image"
RESOURCES_TAG = f"{TAG_PREFIX}resources"
CREATED_TAG = f"{TAG_PREFIX}created"

#: Per-request knobs Modal has and ``SandboxSpec`` does not, passed as labels
#: (kept as labels too, so a listed sandbox shows how it was made).
TUNNEL_PORTS_LABEL = "modal.tunnel-ports"
IDLE_TIMEOUT_LABEL = "modal.idle-timeout-seconds"

#: Modal's ceiling on a sandbox's lifetime (``timeout``), seconds.
MAX_TIMEOUT_SECONDS = 24 * 3600
#: Working directory of every command unless the caller names one.
WORKSPACE = "/workspace"
#: What a sandbox runs when the spec has no entry command: it must outlive
#: every exec, and Modal ends a sandbox when its command exits.
IDLE_COMMAND = ("sleep", "infinity")
#: ``Sandbox.poll`` reports this for a sandbox ended by ``terminate`` (SDK's
#: mapping of its TERMINATED status); we read it as "deleted".
TERMINATED_RETURNCODE = 137


@dataclass(frozen=True)
class ModalDefaults:
    """Provider-wide defaults, overridden per request. Cost-relevant: a sandbox
    bills until ``timeout_seconds`` unless deleted or idle past ``idle_timeout_seconds``."""

    #: Lifetime when the spec has no ``ttl_seconds`` (Modal's own default is 300 s).
    timeout_seconds: int = 3600
    #: Terminate after this long without exec, stdin or tunnel traffic; ``None`` = never.
    idle_timeout_seconds: int | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    #: Ports given an encrypted tunnel on every sandbox (e.g. the env server's 4096).
    tunnel_ports: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: ModalSettings, *, default_ttl_seconds: int | None) -> ModalDefaults:
        """Defaults from the provider's settings (``MODAL_IDLE_TIMEOUT``, ``MODAL_TUNNEL_PORTS``)
        and the service's ``SANDBOX_DEFAULT_TTL_SECONDS`` (capped at Modal's 24 h)."""
        ttl = default_ttl_seconds
        return cls(
            timeout_seconds=min(ttl, MAX_TIMEOUT_SECONDS) if ttl else cls.timeout_seconds,
            idle_timeout_seconds=config.idle_timeout_seconds,
            tunnel_ports=tuple(config.tunnel_ports),
        )


@dataclass(frozen=True)
class CreatePlan:
    """Everything ``Sandbox.create`` gets, and what we report back."""

    image: str | None
    args: tuple[str, ...]
    kwargs: dict[str, Any]
    env: dict[str, str]
    tags: dict[str, str]
    effective: Resources
    created_at: datetime


def create_plan(spec: SandboxSpec, defaults: ModalDefaults, *, base_image: str | None, scope: str) -> CreatePlan:
    """Map ``spec`` (over ``defaults``) to Modal's create parameters; refuse what Modal lacks."""
    for key in spec.labels:
        if key.startswith(TAG_PREFIX):
            raise BadRequest(f"label names starting with {TAG_PREFIX!r} are reserved: {key!r}", field="labels")
    res = spec.resources
    if res.disk_mb is not None:
        raise UnsupportedSpec("resources.disk_mb", PROVIDER, "Modal sandboxes have no disk size setting")
    if spec.network not in (None, "host", "none"):
        raise UnsupportedSpec("network", PROVIDER, "only 'host' (default egress) and 'none' (block_network) exist")
    timeout = spec.ttl_seconds if spec.ttl_seconds is not None else defaults.timeout_seconds
    if not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise UnsupportedSpec("ttl_seconds", PROVIDER, f"Modal sandboxes live between 1 s and {MAX_TIMEOUT_SECONDS} s")
    idle = _int_label(spec.labels, IDLE_TIMEOUT_LABEL)
    idle = idle if idle is not None else defaults.idle_timeout_seconds
    ports = sorted({*defaults.tunnel_ports, *_ports_label(spec.labels)})
    if spec.command is not None:
        check_argv(spec.command)

    cpu = res.cpu if res.cpu is not None else defaults.cpu
    memory = res.memory_mb if res.memory_mb is not None else defaults.memory_mb
    kwargs: dict[str, Any] = {
        "timeout": timeout,
        "workdir": WORKSPACE,
        "block_network": spec.network == "none",
    }
    if idle is not None:
        kwargs["idle_timeout"] = idle
    # Our resources are limits: request == hard limit, so the sandbox gets
    # exactly what the record says (never more, as with docker and local).
    if cpu is not None:
        kwargs["cpu"] = (cpu, cpu)
    if memory is not None:
        kwargs["memory"] = (memory, memory)
    if res.gpu is not None:
        kwargs["gpu"] = res.gpu
    if ports:
        kwargs["encrypted_ports"] = ports
    # pids: Modal has no process limit; reported as None (not enforced).
    effective = Resources(cpu=cpu, memory_mb=memory, gpu=res.gpu)
    image = spec.image or base_image
    created_at = datetime.now(UTC)
    plan_tags = {
        **spec.labels,
        MANAGED_TAG: "true",
        SCOPE_TAG: scope,
        SANDBOX_ID_TAG: spec.sandbox_id,
        RESOURCES_TAG: effective.model_dump_json(exclude_none=True),
        CREATED_TAG: created_at.isoformat(timespec="seconds"),
    }
    if image:
        plan_tags[IMAGE_TAG] = image
    return CreatePlan(
        image=image,
        args=tuple(spec.command) if spec.command is not None else IDLE_COMMAND,
        kwargs=kwargs,
        env=check_env(spec.env),
        tags=plan_tags,
        effective=effective,
        created_at=created_at,
    )


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"label {key!r} must be a whole number of seconds", field="labels") from None
    if value < 1:
        raise BadRequest(f"label {key!r} must be positive", field="labels")
    return value


def _ports_label(labels: Mapping[str, str]) -> list[int]:
    raw = labels.get(TUNNEL_PORTS_LABEL, "")
    ports = []
    for part in raw.split(","):
        if not part.strip():
            continue
        if not part.strip().isdigit() or not 1 <= int(part) <= 65535:
            raise BadRequest(f"label {TUNNEL_PORTS_LABEL!r} must list TCP ports, e.g. '4096,8080'", field="labels")
        ports.append(int(part))
    return ports


def status_of(returncode: int | None) -> ProviderStatus | None:
    """Our status for ``Sandbox.poll``'s answer; ``None`` means the sandbox was deleted."""
    if returncode is None:
        return "running"
    if returncode == TERMINATED_RETURNCODE:
        return None
    # Exit 0 of the entry command (the supervisor's "session over") is a clean
    # stop; anything else, including Modal's 124 for an expired lifetime, failed.
    return "stopped" if returncode == 0 else "failed"


def sandbox_from_tags(object_id: str, status: ProviderStatus, tags: Mapping[str, str]) -> ProviderSandbox:
    """Rebuild a ``ProviderSandbox`` from a listed sandbox's tags."""
    labels = {k: v for k, v in tags.items() if not k.startswith(TAG_PREFIX)}
    try:
        resources = Resources.model_validate(json.loads(tags.get(RESOURCES_TAG, "{}")))
    except ValueError:
        resources = Resources()
    try:
        created = datetime.fromisoformat(tags[CREATED_TAG]) if CREATED_TAG in tags else None
    except ValueError:
        created = None
    return ProviderSandbox(
        provider_object_id=object_id,
        status=status,
        labels=labels,
        image=tags.get(IMAGE_TAG),
        created_at=created,
        resources=resources,
    )


def exec_timeout_seconds(timeout: float) -> int:
    """Modal's exec ``timeout`` is whole seconds: round up, so it never cuts a command short."""
    return max(1, math.ceil(timeout))


def check_env(env: Mapping[str, str] | None, reserved: Sequence[str] = ()) -> dict[str, str]:
    """Validate environment names and values once, for create and exec alike."""
    checked = {}
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value or key in reserved:
            raise BadRequest(f"invalid environment variable name or value: {key!r}", field="env")
        checked[key] = value
    return checked
