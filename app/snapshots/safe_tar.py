"""Validation of archive members against one extraction root (a snapshot path).

``EntryGuard.check`` returns a cleaned copy of an accepted member or raises
``UnsafeEntry`` naming it. The same guard runs when a snapshot is written (a sandbox
is untrusted: its tar stream may be crafted) and when it is read (the bucket may have
been tampered with), so what is stored and what is extracted obey the same rules.

Refused:
  * absolute names, ``..`` components, NUL bytes, over-long names or components;
  * a root entry (``.``) that is not a directory;
  * any member whose path passes through a symlink seen earlier in the archive
    (extracting through a symlink is how a link "escapes" in practice), or that
    reuses the name of one (extracting a directory over a symlink to a directory
    would change the link's target);
  * symlinks whose target leaves the root: relative targets are resolved lexically from
    the link's directory and may use ``..`` only as leading components (``../lib/x``,
    not ``a/../b``: after a real component, ``..`` could climb out through a link);
    absolute targets count as inside only when they lie under the snapshot path
    itself (``/workspace/x`` in ``/workspace``) and contain no ``..``;
  * hard links whose target is absolute, contains ``..``, passes through a symlink or
    names an external symlink; a hard link to a symlink *is* that symlink under its
    own name, so its target text must stay inside from the link's directory too;
  * device nodes, FIFOs, sparse files and any unknown member type.

With ``allow_external_symlinks=True`` symlinks may point anywhere (a virtualenv's
``bin/python -> /usr/bin/python3``) and are kept as inert links: the rules above still
forbid writing through them or hard-linking to them.

Clamped, never refused: modes lose setuid, setgid and sticky bits; files and
directories always grant their owner read and write (and search, for directories), so
a restored tree can be updated and deleted. Ownership fields are kept; importers
should extract without ``--same-owner``.
"""

from __future__ import annotations

import tarfile

from app.errors import SnapshotCorrupt
from app.snapshots.tarstream import REGULAR_TYPES, clean_member

MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255

_TYPE_NAMES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}
#: Member types a sandbox export may contain but a snapshot cannot restore.
SPECIAL_TYPES = frozenset({tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE})


class UnsafeEntry(SnapshotCorrupt):
    """An archive member that could write outside its root or create a special file."""

    code = "snapshot_unsafe_entry"

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"unsafe archive entry {entry!r}: {reason}", entry=entry, reason=reason)
        self.entry = entry
        self.reason = reason


def normalize_name(name: str) -> str:
    """Canonical relative form of a member name (``./a//b/`` → ``a/b``; the root → ``.``).

    Raises ``UnsafeEntry`` for absolute names, ``..`` components and NUL bytes.
    """
    # GNU tar names every member of "tar -C dir ." "./<path>": the rest is usually canonical.
    candidate = name[2:] if name.startswith("./") else name
    parts = candidate.split("/")
    if (
        len(candidate) <= MAX_COMPONENT_BYTES
        and candidate.isascii()
        and "\0" not in candidate
        and "" not in parts
        and "." not in parts
        and ".." not in parts
    ):
        # Already canonical (nearly every member): no empty, "." or ".." component, no
        # leading "/", and short enough that no component or the whole can be too long.
        return candidate
    parts = name.split("/")
    if "\0" in name:
        raise UnsafeEntry(name, "name contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeEntry(name, "absolute path")
    parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(name, "path contains '..'")
    if len(name.encode(errors="surrogateescape")) > MAX_NAME_BYTES or any(
        len(p.encode(errors="surrogateescape")) > MAX_COMPONENT_BYTES for p in parts
    ):
        raise UnsafeEntry(name[:200], "name too long")
    return "/".join(parts) or "."


def clamp_mode(mode: int, *, directory: bool) -> int:
    """Drop setuid/setgid/sticky; give the owner rw (and x on directories)."""
    return (mode & 0o777) | (0o700 if directory else 0o600)


class EntryGuard:
    """Checks the members of one extraction root; holds the symlinks seen so far."""

    def __init__(self, root: str, *, allow_external_symlinks: bool = False) -> None:
        #: The snapshot path this root restores to, e.g. ``/workspace``.
        self.root = root.rstrip("/") or "/"
        self.allow_external_symlinks = allow_external_symlinks
        #: Symlink name -> its target text (hard links to symlinks included).
        self._symlinks: dict[str, str] = {}
        self._external: set[str] = set()

    def _through_symlink(self, name: str) -> str | None:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in self._symlinks:
                return prefix
        return None

    def _symlink_escapes(self, name: str, target: str) -> bool:
        if target.startswith("/"):
            inside = target == self.root or target.startswith(self.root.rstrip("/") + "/")
            return not inside or ".." in target.split("/")
        parts = name.split("/")[:-1]  # the link's directory
        climbing = True
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not climbing or not parts:
                    return True
                parts.pop()
            else:
                climbing = False
                parts.append(comp)
        return False

    def _fail(self, name: str, reason: str) -> UnsafeEntry:
        # Errors name the sandbox path: "/workspace/esc", not the archive-relative "esc".
        return UnsafeEntry(self.root if name == "." else f"{self.root.rstrip('/')}/{name}", reason)

    def check_plain(self, name: str, *, directory: bool) -> str:
        """The normalized name of a regular file or directory member, or ``UnsafeEntry``.

        What ``check`` verifies of those two types, for members that take no ``TarInfo``
        (``plain``); the caller clamps the mode.
        """
        try:
            rel = normalize_name(name)
        except UnsafeEntry as exc:
            raise self._fail(name, exc.reason) from None
        self._check_path(rel, directory=directory)
        return rel

    def _check_path(self, name: str, *, directory: bool) -> None:
        if name == "." and not directory:
            raise self._fail(name, "the root entry is not a directory")
        if not self._symlinks:  # nothing to pass through (most workspaces, until a link)
            return
        via = self._through_symlink(name)
        if via is not None:
            raise self._fail(name, f"path passes through the symlink {via!r}")
        if name in self._symlinks:
            raise self._fail(name, "an earlier member is a symlink of the same name")

    def check(self, info: tarfile.TarInfo) -> tarfile.TarInfo:
        """A cleaned copy of ``info`` with a normalized name, or ``UnsafeEntry``."""
        try:
            name = normalize_name(info.name)
        except UnsafeEntry as exc:
            raise self._fail(info.name, exc.reason) from None
        kind = info.type
        if kind not in REGULAR_TYPES and kind not in (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE):
            raise self._fail(name, _TYPE_NAMES.get(kind, f"unsupported member type {kind!r}"))
        self._check_path(name, directory=kind == tarfile.DIRTYPE)
        if kind == tarfile.SYMTYPE:
            target = info.linkname
            if not target or "\0" in target:
                raise self._fail(name, "symlink with an empty or NUL-containing target")
            escapes = self._symlink_escapes(name, target)
            if escapes and not self.allow_external_symlinks:
                raise self._fail(name, f"symlink target {target!r} leaves {self.root}")
            self._symlinks[name] = target
            if escapes:
                self._external.add(name)
            return clean_member(info, name, mode=0o777, linkname=target)
        if kind == tarfile.LNKTYPE:
            if not info.linkname or info.linkname.startswith("/"):
                raise self._fail(name, f"hard link to {info.linkname!r} outside the archive")
            try:
                target = normalize_name(info.linkname)
            except UnsafeEntry as exc:
                raise self._fail(name, f"hard link target {info.linkname!r}: {exc.reason}") from None
            if target in (".", name):
                raise self._fail(name, f"hard link to {info.linkname!r}")
            via = self._through_symlink(target)
            if via is not None:
                raise self._fail(name, f"hard link target {target!r} passes through the symlink {via!r}")
            if target in self._external:
                raise self._fail(name, f"hard link to the symlink {target!r}, which leaves {self.root}")
            if target in self._symlinks:
                # The link is a second name of the symlink: its text resolves from here.
                text = self._symlinks[target]
                if self._symlink_escapes(name, text):
                    raise self._fail(name, f"hard link to the symlink {target!r}, which leaves {self.root} from here")
                self._symlinks[name] = text
            return clean_member(info, name, mode=clamp_mode(info.mode, directory=False), linkname=target)
        directory = kind == tarfile.DIRTYPE
        return clean_member(info, name, mode=clamp_mode(info.mode, directory=directory))
