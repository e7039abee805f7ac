"""The bwrap command line of local sandboxes, built without running anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.providers.local.bwrap import (
    HostTools,
    SandboxPaths,
    account_file,
    bwrap_options,
    check_env,
    host_argv,
    options_fd,
    sandbox_env,
    system_mounts,
)

TOOLS = HostTools(
    bwrap="/usr/bin/bwrap",
    sh="/bin/sh",
    setsid="/usr/bin/setsid",
    setpriv="/usr/bin/setpriv",
    prlimit="/usr/bin/prlimit",
)
PATHS = SandboxPaths(Path("/data/local/sandboxes/lcl-0123456789ab"))


def options(**overrides: object) -> list[str]:
    values: dict[str, object] = {
        "system": ["--ro-bind", "/usr", "/usr"],
        "paths": PATHS,
        "hostname": "lcl-0123456789ab",
        "isolate_network": False,
        "env": {"PATH": "/usr/bin", "TOKEN": "s3cret"},
        "cwd": "/workspace",
        "host_root": True,
    }
    values.update(overrides)
    return bwrap_options(**values)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str, arity: int = 2) -> list[tuple[str, ...]]:
    return [tuple(argv[i + 1 : i + 1 + arity]) for i, a in enumerate(argv) if a == flag]


def test_namespaces_and_identity() -> None:
    argv = options()
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ):
        assert flag in argv
    assert pairs(argv, "--uid", 1) == [("1000",)] and pairs(argv, "--gid", 1) == [("1000",)]
    assert pairs(argv, "--hostname", 1) == [("lcl-0123456789ab",)]
    assert pairs(argv, "--cap-drop", 1) == [("ALL",)]
    assert "--unshare-net" not in argv
    assert "--unshare-net" in options(isolate_network=True)


def test_sandbox_dirs_are_bound_writable_and_root_is_read_only() -> None:
    argv = options()
    assert set(pairs(argv, "--bind")) == {
        (str(PATHS.workspace), "/workspace"),
        (str(PATHS.home), "/home/sandbox"),
        (str(PATHS.tmp), "/tmp"),
    }
    assert (str(PATHS.passwd), "/etc/passwd") in pairs(argv, "--ro-bind")
    assert pairs(argv, "--remount-ro", 1) == [("/",)]
    # The read-only remount of / comes after every mount that needs a mount point.
    assert argv.index("--remount-ro") > max(i for i, a in enumerate(argv) if a in ("--bind", "--ro-bind"))
    assert ("../tmp", "/var/tmp") in pairs(argv, "--symlink")
    assert ("../tmp", "/var/tmp") not in pairs(options(host_root=False), "--symlink")


def test_env_and_cwd_and_status_fd() -> None:
    argv = options(cwd="/workspace/sub", status_fd=4)
    assert set(pairs(argv, "--setenv")) == {("PATH", "/usr/bin"), ("TOKEN", "s3cret")}
    assert pairs(argv, "--chdir", 1) == [("/workspace/sub",)]
    assert pairs(argv, "--json-status-fd", 1) == [("4",)]


def test_host_argv_stages_in_order() -> None:
    argv = host_argv(
        TOOLS,
        args_fd=7,
        command=["echo", "hi"],
        uid=200_001,
        cgroup_procs=["/cg/memory/x/cgroup.procs", "/cg/pids/x/cgroup.procs"],
        rlimit_options=["--as=1048576"],
    )
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:7] == ["sh", "2", "/cg/memory/x/cgroup.procs", "/cg/pids/x/cgroup.procs"]
    prlimit, setpriv, bwrap = (argv.index(t) for t in ("/usr/bin/prlimit", "/usr/bin/setpriv", "/usr/bin/bwrap"))
    assert prlimit < setpriv < bwrap
    assert "--reuid=200001" in argv and "--no-new-privs" in argv and "--clear-groups" in argv
    assert argv[bwrap:] == ["/usr/bin/bwrap", "--args", "7", "--", "echo", "hi"]


def test_host_argv_unprivileged_is_just_bwrap() -> None:
    assert host_argv(TOOLS, args_fd=3, command=["true"], uid=None) == ["/usr/bin/bwrap", "--args", "3", "--", "true"]


def test_secrets_never_reach_the_host_argv() -> None:
    argv = host_argv(TOOLS, args_fd=3, command=["env"], uid=None)
    assert not any("s3cret" in a for a in argv)


def test_options_fd_holds_nul_separated_options() -> None:
    with options_fd(["--setenv", "A", "b c"]) as fd:
        assert os.read(fd, 100) == b"--setenv\0A\0b c\0"
    with pytest.raises(ValueError), options_fd(["bad\0value"]):
        pass


def test_sandbox_env_precedence() -> None:
    env = sandbox_env({"LANG": "de_DE.UTF-8", "A": "spec"}, {"A": "exec"}, "lcl-x")
    assert env["A"] == "exec" and env["LANG"] == "de_DE.UTF-8"
    assert env["HOME"] == "/home/sandbox" and env["HOSTNAME"] == "lcl-x"


@pytest.mark.parametrize("env", [{"": "x"}, {"A=B": "x"}, {"1A": "x"}, {"A": "x\0y"}])
def test_check_env_refuses_invalid_variables(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        check_env(env)


def test_account_file_replaces_the_sandbox_entries() -> None:
    base = "root:x:0:0:root:/root:/bin/bash\ncloud:x:1000:1000::/home/cloud:/bin/bash\nsandbox:x:5:5::/:/bin/sh\n"
    result = account_file(base, "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh", uid_field=2)
    assert result.splitlines() == [
        "root:x:0:0:root:/root:/bin/bash",
        "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh",
    ]


def test_system_mounts_of_a_rootfs(tmp_path: Path) -> None:
    for name in ("usr", "etc", "proc", "tmp", "home"):
        (tmp_path / name).mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    argv = system_mounts(tmp_path)
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin")]
    assert set(pairs(argv, "--ro-bind")) == {(str(tmp_path / "etc"), "/etc"), (str(tmp_path / "usr"), "/usr")}


def test_host_system_mounts_share_only_system_dirs() -> None:
    targets = {dest for _, dest in pairs(system_mounts(None), "--ro-bind")} | {
        dest for _, dest in pairs(system_mounts(None), "--symlink")
    }
    assert "/usr" in targets and "/etc" in targets
    assert not targets & {"/root", "/home", "/work", "/srv", "/var", "/tmp", "/run"}
