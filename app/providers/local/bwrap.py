"""How a local sandbox is built from bubblewrap arguments.

One function per layer, all pure apart from reading the host's top-level
directory entries:

* ``system_mounts``: the read-only system the sandbox sees (host ``/usr``,
  ``/etc``, ``/opt`` and the ``/bin``-style links, or a configured rootfs).
* ``bwrap_options``: namespaces, the sandbox's own writable dirs, env, cwd.
* ``host_argv``: what runs on the host around bwrap (join cgroups, rlimits,
  drop to the sandbox's host uid).

The bwrap options travel through a memfd (``bwrap --args FD``), not the
command line: ``--setenv`` values hold the sandbox's secrets and a host
command line is world-readable in ``/proc``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.errors import ProviderUnavailable

#: The uid/gid of the sandbox user inside every sandbox.
SANDBOX_UID = 1000
SANDBOX_USER = "sandbox"
WORKSPACE = "/workspace"
SANDBOX_HOME = "/home/sandbox"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The environment of the host-side helpers (sh, setpriv, bwrap); never the service's.
HOST_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

# Host directories shared read-only; never /root, /home, /work, /srv, /var, /tmp, /run.
_HOST_SYSTEM_ENTRIES = ("usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Entries of a rootfs that the sandbox provides itself.
_ROOTFS_SKIPPED = frozenset({"proc", "dev", "sys", "tmp", "run", "home", "workspace", "lost+found"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Run on the host as the exec/init process itself: join the sandbox's cgroups,
#: then become the next program (so the pid, and its process group, stay the same).
JOIN_CGROUPS_SCRIPT = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"'
)

#: The detached keeper of a running sandbox (started through ``setsid -f`` so it
#: is nobody's child): records its pid, runs bwrap with bwrap's JSON status on
#: fd 4, and records bwrap's exit status. Staying bwrap's parent matters:
#: bwrap's --die-with-parent would kill the sandbox if its parent exited.
KEEPER_SCRIPT = r"""dir=$1; shift
echo $$ > "$dir/init.pid"
"$@" 4> "$dir/init.status.json"
echo $? > "$dir/init.exit"
"""
#: The fd bwrap writes its JSON status to in the keeper.
KEEPER_STATUS_FD = 4


@dataclass(frozen=True)
class SandboxPaths:
    """The on-disk layout of one sandbox: ``<data_dir>/local/sandboxes/<ref>/``."""

    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def group(self) -> Path:
        return self.root / "group"

    @property
    def init_record(self) -> Path:
        return self.root / "init.json"

    @property
    def init_pid(self) -> Path:
        return self.root / "init.pid"

    @property
    def init_status(self) -> Path:
        return self.root / "init.status.json"

    @property
    def init_exit(self) -> Path:
        return self.root / "init.exit"

    @property
    def init_log(self) -> Path:
        return self.root / "init.log"


@dataclass(frozen=True)
class HostTools:
    """Absolute paths of the host programs the provider runs."""

    bwrap: str
    sh: str
    setsid: str
    setpriv: str | None
    prlimit: str | None


def find_host_tools(bwrap_name: str, *, privileged: bool) -> HostTools:
    """Resolve bwrap and the util-linux helpers, or say what to install."""
    bwrap = shutil.which(bwrap_name)
    if bwrap is None:
        raise ProviderUnavailable(
            f"local provider: bubblewrap not found (SANDBOX_LOCAL_BWRAP={bwrap_name!r}); "
            "install it with `apt-get install bubblewrap`"
        )
    found = {name: shutil.which(name, path=HOST_ENV["PATH"]) for name in ("sh", "setsid", "setpriv", "prlimit")}
    needed = ["sh", "setsid"] + (["setpriv"] if privileged else [])
    if missing := [name for name in needed if found[name] is None]:
        raise ProviderUnavailable(f"local provider: missing host programs {missing} (install util-linux)")
    return HostTools(
        bwrap=bwrap,
        sh=str(found["sh"]),
        setsid=str(found["setsid"]),
        setpriv=found["setpriv"],
        prlimit=found["prlimit"],
    )


def smoke_test_options(system: Sequence[str]) -> list[str]:
    """A minimal sandbox (same namespaces, system only) for checking that bwrap works."""
    namespaces = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    return [*namespaces, "--new-session", "--cap-drop", "ALL", *system, "--proc", "/proc", "--dev", "/dev"]


def system_mounts(rootfs: Path | None) -> list[str]:
    """bwrap options exposing the system read-only: host dirs, or ``rootfs`` at ``/``."""
    base = rootfs if rootfs is not None else Path("/")
    if rootfs is None:
        names: Sequence[str] = _HOST_SYSTEM_ENTRIES
    else:
        names = sorted(n for n in os.listdir(rootfs) if n not in _ROOTFS_SKIPPED)
    options: list[str] = []
    for name in names:
        source = base / name
        if source.is_symlink():
            # /bin -> usr/bin stays a link, resolved inside the sandbox.
            options += ["--symlink", os.readlink(source), f"/{name}"]
        elif source.exists():
            options += ["--ro-bind", str(source), f"/{name}"]
    return options


def account_file(base: str, line: str, *, uid_field: int) -> str:
    """``/etc/passwd`` or ``/etc/group`` text with ``line`` as the sandbox's entry.

    Entries with the sandbox's name or id are dropped so tools resolve uid
    1000 to ``sandbox`` with home ``/home/sandbox``.
    """
    name, ident = line.split(":")[0], line.split(":")[uid_field]
    kept = [
        entry
        for entry in base.splitlines()
        if entry.strip()
        and entry.split(":")[0] != name
        and (len(entry.split(":")) <= uid_field or entry.split(":")[uid_field] != ident)
    ]
    return "\n".join([*kept, line]) + "\n"


def sandbox_env(
    spec_env: Mapping[str, str], exec_env: Mapping[str, str] | None, hostname: str, path_prefix: str = ""
) -> dict[str, str]:
    """The complete environment of a sandboxed process: defaults, spec, then exec."""
    env = {
        "PATH": f"{path_prefix}:{SANDBOX_PATH}" if path_prefix else SANDBOX_PATH,
        "HOME": SANDBOX_HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "LANG": "C.UTF-8",
        "HOSTNAME": hostname,
    }
    env.update(spec_env)
    env.update(exec_env or {})
    return env


def check_env(env: Mapping[str, str]) -> None:
    """Refuse names and values that cannot be passed to a process."""
    for key, value in env.items():
        if not _ENV_NAME.match(key) or "\0" in value:
            raise ValueError(f"invalid environment variable {key!r}")


def bwrap_options(
    *,
    system: Sequence[str],
    paths: SandboxPaths,
    hostname: str,
    isolate_network: bool,
    env: Mapping[str, str],
    cwd: str,
    host_root: bool,
    status_fd: int | None = None,
) -> list[str]:
    """Every bwrap option of a sandboxed process (init, exec and file helpers alike)."""
    options = [
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", hostname,
    ]  # fmt: skip
    if isolate_network:
        options.append("--unshare-net")
    options += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    options += system
    options += ["--ro-bind", str(paths.passwd), "/etc/passwd", "--ro-bind", str(paths.group), "/etc/group"]
    options += ["--proc", "/proc", "--dev", "/dev"]
    options += ["--bind", str(paths.tmp), "/tmp"]
    options += ["--bind", str(paths.workspace), WORKSPACE]
    options += ["--bind", str(paths.home), SANDBOX_HOME]
    if host_root:
        # The host's /var is not shared; programs still expect /var/tmp.
        options += ["--symlink", "../tmp", "/var/tmp"]
    # Everything outside the binds above is bwrap's scratch tmpfs: make it read-only.
    options += ["--remount-ro", "/", "--chdir", cwd, "--clearenv"]
    for key, value in env.items():
        options += ["--setenv", key, value]
    if status_fd is not None:
        options += ["--json-status-fd", str(status_fd)]
    return options


def host_argv(
    tools: HostTools,
    *,
    args_fd: int,
    command: Sequence[str],
    uid: int | None,
    cgroup_procs: Sequence[str] = (),
    rlimit_options: Sequence[str] = (),
) -> list[str]:
    """The host command line around bwrap, each stage ``exec``-ing the next."""
    argv: list[str] = []
    if cgroup_procs:
        argv += [tools.sh, "-c", JOIN_CGROUPS_SCRIPT, "sh", str(len(cgroup_procs)), *cgroup_procs]
    if rlimit_options:
        assert tools.prlimit is not None
        argv += [tools.prlimit, *rlimit_options, "--"]
    if uid is not None:
        # Root runs bwrap as the sandbox's own unprivileged host uid.
        assert tools.setpriv is not None
        argv += [tools.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]
    return [*argv, tools.bwrap, "--args", str(args_fd), "--", *command]


@contextmanager
def options_fd(options: Sequence[str]) -> Iterator[int]:
    """A memfd holding NUL-separated bwrap options, for ``--args FD``."""
    for option in options:
        if "\0" in option:
            raise ValueError("NUL byte in a sandbox argument")
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    try:
        data = memoryview(b"".join(option.encode() + b"\0" for option in options))
        while data:
            data = data[os.write(fd, data) :]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)
