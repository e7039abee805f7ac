"""Directory-level file operations of running sandboxes: stat, list, mkdir, delete, move, chmod/chown.

Each is one exec of a coreutils command as the sandbox's own user, so it works
on every provider; a failure is mapped from the tool's words to the same
answers as the file API's (``app.services.files``: 404 ``file_not_found``,
403 ``permission_denied``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import BadRequest
from app.providers.base import Provider
from app.services.files import check_names, message_error
from app.services.sandboxes import SandboxService, resolve_sandbox_path

#: Seconds one file operation may take (a recursive delete of a big tree among them).
OPERATION_TIMEOUT = 120.0
#: type|size|mode text|octal mode|owner|group|mtime epoch|path (the path last: it may hold ``|``).
_STAT_FORMAT = "%F|%s|%A|%a|%U|%G|%Y|%n"
_STAT = f'exec stat -c "{_STAT_FORMAT}" -- "$1"'
_LIST = '[ -d "$1" ] || { stat -c %n -- "$1" >/dev/null && echo "$1: Not a directory" >&2; exit 1; }; ' + (
    f'exec find "$1" -mindepth 1 -maxdepth "$2" -exec stat -c "{_STAT_FORMAT}" -- {{}} +'
)
_MKDIR = 'exec mkdir -p -m "$2" -- "$1"'
_DELETE = (
    '[ -e "$1" ] || [ -L "$1" ] || { echo "$1: No such file or directory" >&2; exit 1; }; '
    'if [ -d "$1" ] && [ ! -L "$1" ]; then '
    '[ "$2" = true ] && exec rm -rf -- "$1"; exec rmdir -- "$1"; fi; '
    'exec rm -f -- "$1"'
)
_MOVE = 'exec mv -T -- "$1" "$2"'
_MODE = re.compile(r"^[0-7]{3,4}$")
_OWNER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class FileEntry:
    """One file or directory as ``stat`` saw it."""

    path: str
    is_dir: bool
    size: int
    mode: str
    permissions: str
    owner: str
    group: str
    modified: int

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1] or "/"


def _entry(line: str) -> FileEntry:
    kind, size, mode, octal, owner, group, mtime, path = line.split("|", 7)
    return FileEntry(path, kind == "directory", int(size), mode, octal.zfill(4), owner, group, int(mtime))


class FileTree:
    """Look at and rearrange files and directories of running sandboxes."""

    def __init__(self, sandboxes: SandboxService, provider: Provider) -> None:
        self._sandboxes = sandboxes
        self._provider = provider

    async def _run(self, any_id: str, script: str, path: str, *args: str, fallback: str) -> str:
        ref = await self._sandboxes.running_ref(any_id)
        result = await self._provider.exec(ref, ["sh", "-c", script, "sh", path, *args], timeout=OPERATION_TIMEOUT)
        if result.exit_code != 0:
            raise message_error(result.stderr.decode(errors="replace"), path, fallback)
        return result.stdout.decode(errors="replace")

    @staticmethod
    def _path(path: str) -> str:
        target = resolve_sandbox_path(path)
        check_names(target)
        return target

    async def info(self, any_id: str, path: str) -> FileEntry:
        output = await self._run(any_id, _STAT, self._path(path), fallback="cannot read the file's details")
        return _entry(output.rstrip("\n"))

    async def list(self, any_id: str, path: str, depth: int = 1) -> list[FileEntry]:
        """The entries of a directory (``depth`` levels down), sorted by path."""
        if not 1 <= depth <= 32:
            raise BadRequest("depth must be 1-32", field="depth")
        output = await self._run(any_id, _LIST, self._path(path), str(depth), fallback="cannot list the directory")
        return sorted((_entry(line) for line in output.splitlines() if line), key=lambda e: e.path)

    async def make_dir(self, any_id: str, path: str, mode: str = "755") -> None:
        """Create a directory and its missing parents (an existing directory is fine)."""
        if not _MODE.match(mode):
            raise BadRequest(f"mode must be octal like 755, not {mode!r}", field="mode")
        await self._run(any_id, _MKDIR, self._path(path), mode, fallback="cannot create the directory")

    async def delete(self, any_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory (``recursive`` for one that is not empty)."""
        flag = "true" if recursive else "false"
        await self._run(any_id, _DELETE, self._path(path), flag, fallback="cannot delete")

    async def move(self, any_id: str, source: str, destination: str) -> None:
        """Rename ``source`` to ``destination`` (replacing a file there; never moving into a directory)."""
        target = self._path(destination)
        await self._run(any_id, _MOVE, self._path(source), target, fallback="cannot move")

    async def set_permissions(
        self, any_id: str, path: str, *, mode: str | None = None, owner: str | None = None, group: str | None = None
    ) -> None:
        """``chmod`` and/or ``chown``; the sandbox's user may only give away what it may."""
        target = self._path(path)
        if mode is not None and not _MODE.match(mode):
            raise BadRequest(f"mode must be octal like 644, not {mode!r}", field="mode")
        for field, name in (("owner", owner), ("group", group)):
            if name is not None and not _OWNER.match(name):
                raise BadRequest(f"invalid {field} {name!r}", field=field)
        if mode is not None:
            await self._run(any_id, 'exec chmod "$2" -- "$1"', target, mode, fallback="cannot change the mode")
        if owner or group:
            spec = f"{owner or ''}{':' + group if group else ''}"
            await self._run(any_id, 'exec chown "$2" -- "$1"', target, spec, fallback="cannot change the owner")
