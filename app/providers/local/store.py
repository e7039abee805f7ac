"""On-disk state of local sandboxes under ``<data_dir>/local/sandboxes/<ref>/``.

``meta.json`` is the sandbox's identity (written once, atomically); it is
what ``list`` reads, so a restarted service finds its sandboxes again.
``init.json`` describes the running init (pid, start time, boot id, the
limits it was given) and exists only between ``start`` and ``stop``.

Sync code: the provider calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from app.errors import ProviderUnavailable, SandboxNotFound
from app.providers.base import Resources, SandboxSpec
from app.providers.local import procs
from app.providers.local.bwrap import SANDBOX_HOME, SANDBOX_UID, SANDBOX_USER, SandboxPaths, account_file
from app.providers.local.limits import AppliedLimits

REF_PREFIX = "lcl-"
_REF_PATTERN = re.compile(r"^lcl-[0-9a-f]{12}$")


class SandboxMeta(BaseModel):
    """What a sandbox was created with; immutable after ``create``."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    ref: str
    sandbox_id: str
    labels: dict[str, str]
    image: str
    env: dict[str, str]
    network: Literal["host", "none"]
    command: list[str] | None
    #: As requested, and as enforced (``None`` where no mechanism could).
    resources: Resources
    effective: Resources
    created_at: datetime
    ttl_seconds: int | None = None
    #: Host uid the sandbox runs as (root service only), else None.
    uid: int | None = None


class InitRecord(BaseModel):
    """The running init of a sandbox, as recorded at ``start``."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    start_time: int
    boot_id: str
    cgroups: list[str] = []
    rlimit_options: list[str] = []
    stop_requested: bool = False

    @property
    def stamp(self) -> procs.ProcessStamp:
        return procs.ProcessStamp(self.pid, self.start_time, self.boot_id)

    @property
    def limits(self) -> AppliedLimits:
        return AppliedLimits(cgroups=tuple(self.cgroups), rlimit_options=tuple(self.rlimit_options))


def new_ref() -> str:
    """A fresh provider object id, e.g. ``lcl-3f9a0c1b2d4e``."""
    return REF_PREFIX + secrets.token_hex(6)


def meta_of(spec: SandboxSpec, *, network: str, effective: Resources) -> SandboxMeta:
    """The meta of a new sandbox for ``spec`` (checked), under a fresh ref."""
    return SandboxMeta(
        ref=new_ref(),
        sandbox_id=spec.sandbox_id,
        labels=dict(spec.labels),
        image=spec.image or "local",
        env=dict(spec.env),
        network=network,
        command=list(spec.command) if spec.command is not None else None,
        resources=spec.resources,
        effective=effective,
        created_at=datetime.now(UTC),
        ttl_seconds=spec.ttl_seconds,
    )


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_tree(path: Path) -> None:
    """``rm -rf`` that also copes with read-only directories left by the sandbox."""

    def make_writable(func: Callable[..., Any], target: str, _exc: Any) -> None:
        parent = os.path.dirname(target)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


class LocalStore:
    """Reads and writes sandbox directories; allocates refs and host uids."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sandboxes = base / "sandboxes"

    def prepare(self) -> None:
        """Create the directories; traversable (not listable) by sandbox uids."""
        for directory in (self.base, self.sandboxes):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o711)

    def check_searchable(self) -> None:
        """Sandbox uids must traverse to their directories: every parent needs o+x."""
        for directory in [self.sandboxes, *self.sandboxes.parents]:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                raise ProviderUnavailable(
                    f"local provider: {directory} is not searchable by other users, but sandboxes run as "
                    f"unprivileged host uids and must reach {self.sandboxes}; run `chmod o+x {directory}` or "
                    "point SANDBOX_DATA_DIR at a path such as /var/lib/sandbox-control"
                )

    def paths(self, ref: str) -> SandboxPaths:
        """The layout of ``ref``; a malformed ref cannot exist (nor escape the dir)."""
        if not _REF_PATTERN.match(ref):
            raise SandboxNotFound(f"no local sandbox {ref!r}", ref=ref)
        return SandboxPaths(self.sandboxes / ref)

    def load_meta(self, ref: str) -> SandboxMeta:
        """The sandbox's meta, or ``SandboxNotFound``."""
        try:
            return SandboxMeta.model_validate_json(self.paths(ref).meta.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise SandboxNotFound(f"no local sandbox {ref!r}", ref=ref) from None

    def all_metas(self) -> list[SandboxMeta]:
        """Every sandbox with a readable meta (half-created dirs are skipped)."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.sandboxes.iterdir()):
                if _REF_PATTERN.match(entry.name):
                    with contextlib.suppress(OSError, ValidationError):
                        found.append(SandboxMeta.model_validate_json((entry / "meta.json").read_bytes()))
        return found

    def sweep_half_created(self) -> list[str]:
        """Remove sandbox dirs a create left without a meta (its process died mid-layout); their refs.

        Creates lay a sandbox out under the allocation lock and write the meta
        last, so under that lock a dir without a readable meta has no creator
        left: nothing else would ever list or delete it.
        """
        removed = []
        with self._allocation_lock(), contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.sandboxes.iterdir()):
                if not _REF_PATTERN.match(entry.name):
                    continue
                try:
                    SandboxMeta.model_validate_json((entry / "meta.json").read_bytes())
                except (OSError, ValidationError):
                    remove_tree(entry)
                    removed.append(entry.name)
        return removed

    @contextlib.contextmanager
    def _allocation_lock(self) -> Iterator[None]:
        # flock, not an asyncio lock: two service processes may share a data dir.
        with open(self.base / "alloc.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create(self, meta: SandboxMeta, *, uid_range: range | None, etc_dir: Path) -> SandboxMeta:
        """Claim a ref (and a host uid) and lay out the sandbox's directories.

        ``meta.ref`` is replaced if taken. With ``uid_range`` the lowest uid not
        used by another sandbox here nor by any live host process is taken and
        the writable dirs are chowned to it.
        """
        with self._allocation_lock():
            uid = None
            if uid_range is not None:
                used = {m.uid for m in self.all_metas()} | procs.uids_in_use(uid_range.start, uid_range.stop)
                uid = next((u for u in uid_range if u not in used), None)
                if uid is None:
                    raise ProviderUnavailable(f"no free sandbox uid in [{uid_range.start}, {uid_range.stop})")
            ref = meta.ref
            while (self.sandboxes / ref).exists():
                ref = new_ref()
            meta = meta.model_copy(update={"uid": uid, "ref": ref})
            paths = self.paths(ref)
            paths.root.mkdir(mode=0o711)
            paths.root.chmod(0o711)
            for directory in (paths.workspace, paths.home, paths.tmp):
                directory.mkdir(mode=0o700)
                if uid is not None:
                    os.chown(directory, uid, uid)
            user = f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:{SANDBOX_USER}:{SANDBOX_HOME}:/bin/sh"
            for target, line, source in (
                (paths.passwd, user, "passwd"),
                (paths.group, f"{SANDBOX_USER}:x:{SANDBOX_UID}:", "group"),
            ):
                base = (etc_dir / source).read_text() if (etc_dir / source).is_file() else ""
                write_atomic(target, account_file(base, line, uid_field=2).encode(), 0o644)
            write_atomic(paths.meta, meta.model_dump_json(indent=2).encode(), durable=True)
            return meta

    def load_init(self, ref: str) -> InitRecord | None:
        """The init record, or None when the sandbox was never started or is stopped."""
        try:
            return InitRecord.model_validate_json(self.paths(ref).init_record.read_bytes())
        except (FileNotFoundError, ValidationError):
            return None

    def save_init(self, ref: str, record: InitRecord) -> None:
        write_atomic(self.paths(ref).init_record, record.model_dump_json().encode())

    def init_exit_status(self, ref: str) -> int | None:
        """The exit status the keeper recorded for the last init, if any."""
        try:
            return int(self.paths(ref).init_exit.read_text().strip())
        except (OSError, ValueError):
            return None

    def clear_init(self, ref: str) -> None:
        """Forget the (ended) init: the sandbox reads as stopped."""
        paths = self.paths(ref)
        for path in (paths.init_record, paths.init_pid, paths.init_status, paths.init_exit):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove(self, ref: str) -> None:
        """Delete the sandbox's directory and everything in it."""
        with contextlib.suppress(FileNotFoundError):
            remove_tree(self.paths(ref).root)
