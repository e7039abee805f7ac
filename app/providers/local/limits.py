"""Resource limits of local sandboxes: cgroup v2, else cgroup v1, else rlimits.

The mechanism is chosen once (``ResourceLimiter.probe``) by trying it: a
cgroup hierarchy counts only if we can create our group in it. Each
sandbox gets its own cgroup per controller, named after its ref under a
``sandbox-control`` parent at the top of the hierarchy. Top level, not under
the service's own cgroup, because sandboxes outlive the service: a service
manager stopping the service's unit would otherwise kill them too.

Processes join the cgroups before they ``exec`` bwrap (see
``bwrap.JOIN_CGROUPS_SCRIPT``), so nothing escapes between fork and
join. The init and every exec share the sandbox's limits.

Fallback rlimits are per process (``RLIMIT_AS``) or per host uid
(``RLIMIT_NPROC``, which is only meaningful when each sandbox has its own
host uid, i.e. when the service runs as root). A limit no mechanism can
enforce is reported as ``None`` in the effective resources; cpu has no
rlimit equivalent.

Sync functions: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.providers.base import Resources

Mechanism = Literal["cgroup2", "cgroup1", "rlimit"]
GROUP_NAME = "sandbox-control"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class AppliedLimits:
    """What a running sandbox was given: its cgroup dirs and prlimit options."""

    cgroups: tuple[str, ...] = ()
    rlimit_options: tuple[str, ...] = ()

    @property
    def procs_files(self) -> list[str]:
        return [f"{directory}/cgroup.procs" for directory in self.cgroups]


@dataclass
class ResourceLimiter:
    """Creates, fills and removes per-sandbox cgroups (or falls back to rlimits)."""

    privileged: bool
    cgroup_root: Path = Path("/sys/fs/cgroup")
    mechanism: Mechanism = "rlimit"
    #: Whether the ``prlimit`` program exists (the rlimit fallback needs it).
    prlimit_available: bool = True
    #: controller -> the ``sandbox-control`` parent dir we may create groups in.
    parents: dict[str, Path] = field(default_factory=dict)

    def probe(self) -> Mechanism:
        """Pick the best usable mechanism by trying it."""
        self.parents = self._probe_v2() or self._probe_v1()
        if self.parents:
            self.mechanism = "cgroup2" if "unified" in self.parents else "cgroup1"
        else:
            self.mechanism = "rlimit"
        return self.mechanism

    def _probe_v2(self) -> dict[str, Path]:
        for root in (self.cgroup_root, self.cgroup_root / "unified"):
            try:
                available = set((root / "cgroup.controllers").read_text().split())
            except OSError:
                continue
            if not {"memory", "pids"} <= available:
                continue
            wanted = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in available)
            parent = root / GROUP_NAME
            try:
                parent.mkdir(exist_ok=True)
                # Children can only use controllers their parent delegates.
                (root / "cgroup.subtree_control").write_text(wanted)
                (parent / "cgroup.subtree_control").write_text(wanted)
            except OSError:
                continue
            return {"unified": parent}
        return {}

    def _probe_v1(self) -> dict[str, Path]:
        parents: dict[str, Path] = {}
        for controller, marker in (
            ("memory", "memory.limit_in_bytes"),
            ("pids", "pids.max"),
            ("cpu", "cpu.cfs_quota_us"),
        ):
            mount = self.cgroup_root / controller
            if (mount / "cgroup.controllers").exists() or not (mount / "cgroup.procs").exists():
                continue
            parent = mount / GROUP_NAME
            try:
                parent.mkdir(exist_ok=True)
            except OSError:
                continue
            if (parent / marker).exists():
                parents[controller] = parent
        return parents

    def _can_limit(self, controller: str) -> bool:
        return "unified" in self.parents or controller in self.parents

    def effective(self, requested: Resources) -> Resources:
        """The subset of ``requested`` that will actually be enforced."""
        if self.mechanism == "rlimit":
            return Resources(
                memory_mb=requested.memory_mb if self.prlimit_available else None,
                pids=requested.pids if self.prlimit_available and self.privileged else None,
            )
        return Resources(
            cpu=requested.cpu if self._can_limit("cpu") else None,
            memory_mb=requested.memory_mb if self._can_limit("memory") else None,
            pids=requested.pids if self._can_limit("pids") else None,
        )

    def apply(self, ref: str, requested: Resources) -> AppliedLimits:
        """Create the sandbox's cgroups (or rlimit options) for ``requested``. Blocking: run in a thread."""
        limits = self.effective(requested)
        if self.mechanism == "rlimit":
            options: list[str] = []
            if limits.memory_mb is not None:
                options.append(f"--as={limits.memory_mb << 20}")
            if limits.pids is not None:
                options.append(f"--nproc={limits.pids}")
            return AppliedLimits(rlimit_options=tuple(options))
        writes: dict[str, dict[str, str]] = {}
        if self.mechanism == "cgroup2":
            files: dict[str, str] = {}
            if limits.memory_mb is not None:
                files.update({"memory.max": str(limits.memory_mb << 20), "memory.swap.max": "0"})
            if limits.pids is not None:
                files["pids.max"] = str(limits.pids)
            if limits.cpu is not None:
                files["cpu.max"] = f"{max(1000, int(limits.cpu * CPU_PERIOD_US))} {CPU_PERIOD_US}"
            if files:
                writes["unified"] = files
        else:
            if limits.memory_mb is not None:
                size = str(limits.memory_mb << 20)
                # memsw (memory+swap) must stay >= the memory limit: write it second.
                writes["memory"] = {"memory.limit_in_bytes": size, "memory.memsw.limit_in_bytes": size}
            if limits.pids is not None:
                writes["pids"] = {"pids.max": str(limits.pids)}
            if limits.cpu is not None:
                quota = max(1000, int(limits.cpu * CPU_PERIOD_US))
                writes["cpu"] = {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
        created: list[str] = []
        try:
            for controller, values in writes.items():
                directory = self.parents[controller] / ref
                directory.mkdir(exist_ok=True)
                created.append(str(directory))
                for name, value in values.items():
                    # Swap accounting may be compiled out; the memory limit itself may not.
                    optional = name.startswith(("memory.memsw", "memory.swap"))
                    _write_optional(directory / name, value, required=not optional)
        except OSError:
            self.release(created)
            raise
        return AppliedLimits(cgroups=tuple(created))

    def existing(self, ref: str) -> list[str]:
        """Cgroup dirs of ``ref`` that exist now (e.g. left by a crashed service)."""
        return [str(parent / ref) for parent in self.parents.values() if (parent / ref).is_dir()]

    def release(self, cgroups: Sequence[str], *, attempts: int = 50) -> None:
        """Kill whatever is left in the sandbox's cgroups and remove them.

        Blocking (it polls the kernel until killed tasks leave the group): call it
        from a worker thread, as ``apply`` and the provider's halt path do.
        """
        for directory in dict.fromkeys(cgroups):
            path = Path(directory)
            for _ in range(attempts):
                pids = _cgroup_pids(path)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                # Killed tasks leave the group once the kernel finishes them.
                time.sleep(0.02)


def _cgroup_pids(directory: Path) -> list[int]:
    try:
        return [int(line) for line in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _write_optional(path: Path, value: str, *, required: bool) -> None:
    """Write one cgroup knob; optional knobs (swap accounting) may be absent."""
    try:
        path.write_text(value)
    except OSError:
        if required:
            raise
