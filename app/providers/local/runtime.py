"""What a local sandbox needs to run ``python3 -m sandbox_runtime`` and OpenCode.

A local sandbox sees the host's system directories, not the service's
virtualenv. The runtime package, the Python packages it imports (the
service's own site-packages, same interpreter ABI) and, when installed, the
OpenCode npm package are bound read-only under ``/run/sandbox-runtime``.
Only the supervisor's command line carries the import path
(``PYTHONPATH``); the runtime strips it from the env server and hooks, so
the agent's own Python is not affected.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import sandbox_runtime
from sandbox_runtime.contract import RUNTIME_PYTHONPATH

MOUNT_ROOT = "/run/sandbox-runtime"
PYTHON_DIR = f"{MOUNT_ROOT}/python"
SITE_DIR = f"{MOUNT_ROOT}/site-packages"
NODE_MODULES = f"{MOUNT_ROOT}/node_modules"
#: Prepended to a local sandbox's PATH when OpenCode is bound.
NODE_BIN = f"{NODE_MODULES}/.bin"
#: Where ``scripts/install-opencode.sh`` puts OpenCode by default.
DEFAULT_OPENCODE_DIR = Path(__file__).resolve().parents[2] / ".test-cache" / "opencode" / "node_modules"


@dataclass(frozen=True)
class RuntimeBundle:
    """bwrap options binding the runtime, and the supervisor's command line."""

    mounts: list[str] = field(default_factory=list)
    path_prefix: str = ""

    @property
    def command(self) -> list[str]:
        import_path = f"{PYTHON_DIR}:{SITE_DIR}"
        return [
            "env",
            f"PYTHONPATH={import_path}",
            f"{RUNTIME_PYTHONPATH}={import_path}",
            "python3",
            "-m",
            "sandbox_runtime",
        ]


def runtime_bundle(opencode_dir: Path | None) -> RuntimeBundle:
    """Bind the runtime package and its dependencies, and OpenCode when it is installed."""
    package = Path(sandbox_runtime.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    mounts = ["--ro-bind", str(package), f"{PYTHON_DIR}/sandbox_runtime", "--ro-bind", str(site), SITE_DIR]
    node_modules = opencode_dir if opencode_dir is not None else DEFAULT_OPENCODE_DIR
    if (node_modules / ".bin").is_dir():
        mounts += ["--ro-bind", str(node_modules.resolve()), NODE_MODULES]
        return RuntimeBundle(mounts, NODE_BIN)
    return RuntimeBundle(mounts)
