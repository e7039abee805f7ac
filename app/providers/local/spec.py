"""What a local sandbox can be asked for: the checks of ``create`` and ``exec`` requests.

Local sandboxes run on the host system (or ``SANDBOX_LOCAL_ROOTFS``) with its
network or none, under cgroup or rlimit limits: a named image or network, a
GPU and a disk quota are refused with ``UnsupportedSpec`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.errors import BadRequest, UnsupportedSpec
from app.providers.base import SandboxSpec, check_argv
from app.providers.local.bwrap import WORKSPACE, check_env

PROVIDER = "local"


def check_spec(spec: SandboxSpec, *, base_image: str | None) -> str:
    """Refuse what local cannot honour; returns the network mode."""
    if spec.image not in (None, "local", base_image):
        raise UnsupportedSpec("image", PROVIDER, "local sandboxes use the host system or SANDBOX_LOCAL_ROOTFS")
    if spec.network not in (None, "host", "none"):
        raise UnsupportedSpec("network", PROVIDER, "only 'host' and 'none' are available")
    if spec.resources.gpu is not None:
        raise UnsupportedSpec("resources.gpu", PROVIDER, "no GPU passthrough")
    if spec.resources.disk_mb is not None:
        raise UnsupportedSpec("resources.disk_mb", PROVIDER, "no per-sandbox disk quota")
    if spec.command is not None:
        check_argv(spec.command)
    _check_env(spec.env)
    return spec.network or "host"


def check_exec(argv: Sequence[str], *, cwd: str | None, env: Mapping[str, str] | None, timeout: float) -> str:
    """Refuse a malformed exec request; returns its working directory."""
    check_argv(argv)
    cwd = cwd or WORKSPACE
    if not cwd.startswith("/") or "\0" in cwd:
        raise BadRequest(f"cwd must be an absolute path: {cwd!r}")
    _check_env(env or {})
    if timeout <= 0:
        raise BadRequest("timeout must be positive")
    return cwd


def _check_env(env: Mapping[str, str]) -> None:
    try:
        check_env(env)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
