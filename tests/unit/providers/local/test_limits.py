"""Resource limit mechanisms, on directory trees shaped like cgroup mounts."""

from __future__ import annotations

from pathlib import Path

from app.providers.base import Resources
from app.providers.local.limits import GROUP_NAME, ResourceLimiter

WANT = Resources(cpu=1.5, memory_mb=256, pids=64)


def v1_tree(root: Path, controllers: tuple[str, ...] = ("memory", "pids", "cpu")) -> None:
    markers = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.cfs_quota_us"}
    for controller in controllers:
        (root / controller / GROUP_NAME).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
        # A real cgroupfs creates the knobs itself; a plain directory needs help.
        (root / controller / GROUP_NAME / markers[controller]).write_text("")


def test_v1_limits_are_written_per_controller(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    limiter = ResourceLimiter(privileged=True, cgroup_root=tmp_path)
    assert limiter.probe() == "cgroup1"
    assert limiter.effective(WANT) == Resources(cpu=1.5, memory_mb=256, pids=64)
    applied = limiter.apply("lcl-1", WANT)
    group = {c: tmp_path / c / GROUP_NAME / "lcl-1" for c in ("memory", "pids", "cpu")}
    assert set(applied.cgroups) == {str(p) for p in group.values()}
    assert (group["memory"] / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (group["pids"] / "pids.max").read_text() == "64"
    assert (group["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"
    assert applied.procs_files[0].endswith("/cgroup.procs")
    assert sorted(limiter.existing("lcl-1")) == sorted(applied.cgroups)
    for directory in group.values():  # a real cgroupfs has no files to delete
        for knob in directory.iterdir():
            knob.unlink()
    limiter.release(applied.cgroups)
    assert not any(p.exists() for p in group.values())


def test_v1_without_cpu_reports_cpu_as_not_enforced(tmp_path: Path) -> None:
    v1_tree(tmp_path, ("memory", "pids"))
    limiter = ResourceLimiter(privileged=True, cgroup_root=tmp_path)
    limiter.probe()
    assert limiter.effective(WANT) == Resources(memory_mb=256, pids=64)
    assert len(limiter.apply("lcl-2", WANT).cgroups) == 2


def test_nothing_requested_creates_no_cgroup(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    limiter = ResourceLimiter(privileged=True, cgroup_root=tmp_path)
    limiter.probe()
    assert limiter.apply("lcl-3", Resources()).cgroups == ()


def test_v2_limits_in_one_group(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    limiter = ResourceLimiter(privileged=True, cgroup_root=tmp_path)
    assert limiter.probe() == "cgroup2"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    applied = limiter.apply("lcl-4", WANT)
    group = tmp_path / GROUP_NAME / "lcl-4"
    assert applied.cgroups == (str(group),)
    assert (group / "memory.max").read_text() == str(256 << 20)
    assert (group / "cpu.max").read_text() == "150000 100000"
    assert (group / "pids.max").read_text() == "64"


def test_v2_without_memory_controller_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("pids\n")
    assert ResourceLimiter(privileged=False, cgroup_root=tmp_path).probe() == "rlimit"


def test_rlimit_fallback(tmp_path: Path) -> None:
    root = ResourceLimiter(privileged=True, cgroup_root=tmp_path / "none")
    assert root.probe() == "rlimit"
    assert root.effective(WANT) == Resources(memory_mb=256, pids=64)
    assert root.apply("lcl-5", WANT).rlimit_options == (f"--as={256 << 20}", "--nproc=64")
    # Without per-sandbox uids RLIMIT_NPROC would count all of the service's processes.
    user = ResourceLimiter(privileged=False, cgroup_root=tmp_path / "none")
    user.probe()
    assert user.effective(WANT) == Resources(memory_mb=256)
    assert user.apply("lcl-6", WANT).rlimit_options == (f"--as={256 << 20}",)


def test_rlimit_fallback_without_prlimit_enforces_nothing(tmp_path: Path) -> None:
    limiter = ResourceLimiter(privileged=True, cgroup_root=tmp_path / "none", prlimit_available=False)
    limiter.probe()
    assert limiter.effective(WANT) == Resources()
    assert limiter.apply("lcl-7", WANT).rlimit_options == ()
