"""Files in and out of a container through the archive API, streamed.

``GET/PUT/HEAD /containers/{id}/archive`` work on running and stopped
containers alike and never hold a whole archive: reads re-frame or unwrap
the Engine's tar as it arrives; writes frame the caller's bytes in tar on the
fly. One exception: a tar header states the file size up front and
``write_file`` receives a stream of unknown length, so that one file is
spooled (memory up to ``SPOOL_MEMORY_BYTES``, then a temporary file) before
it is sent. What is written belongs to the container's user: the Engine's
own ``copyUIDGID`` resolves user names on the host, not in the container,
so the owner is looked up here (``container_owner``) and set in the headers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import json
import posixpath
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO

from app.errors import BadRequest, ProviderError
from app.providers.docker.engine import EngineClient
from app.providers.docker.tar import member_data, reframe, tar_header, tar_padding, tar_trailer
from app.snapshots.tarstream import TarFormatError, TarReader

#: Bytes of an upload kept in memory before spooling to a temporary file.
SPOOL_MEMORY_BYTES = 1 << 20
CHUNK = 64 * 1024
_STAT_HEADER = "X-Docker-Container-Path-Stat"
_MODE_DIR = 1 << 31  # Go's os.ModeDir
_MODE_SYMLINK = 1 << 27  # Go's os.ModeSymlink
#: Go's ModeDir | ModeSymlink | ModeDevice | ModeNamedPipe | ModeSocket | ModeCharDevice | ModeIrregular.
_MODE_NOT_REGULAR = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
_MAX_LINK_HOPS = 8
_TAR = {"Content-Type": "application/x-tar"}

#: Creates a directory (and parents) inside the container as its user.
MakeDirs = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class PathStat:
    """What ``HEAD .../archive`` says about a path."""

    name: str
    size: int
    mode: int
    link_target: str

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & _MODE_DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & _MODE_SYMLINK)

    @property
    def is_regular(self) -> bool:
        """Not a directory, link, device, fifo or socket (Go's ``os.FileMode`` type bits)."""
        return not self.mode & _MODE_NOT_REGULAR


def check_path(path: str) -> str:
    """An absolute, normalised container path, or ``BadRequest``."""
    if not path.startswith("/") or "\0" in path:
        raise BadRequest(f"path must be absolute: {path!r}", field="path")
    return posixpath.normpath(path).replace("//", "/")


def _archive(container: str) -> str:
    return f"containers/{container}/archive"


async def stat_path(engine: EngineClient, container: str, path: str) -> PathStat | None:
    """The path's stat, or ``None`` when it does not exist (missing container raises)."""
    headers = await engine.head(_archive(container), params={"path": path}, ref=container)
    if headers is None:
        # A HEAD 404 has no body to say which is missing: ask about the container.
        await engine.call("GET", f"containers/{container}/json", ref=container)
        return None
    raw = headers.get(_STAT_HEADER, "")
    try:
        stat = json.loads(base64.b64decode(raw))
    except (binascii.Error, ValueError) as exc:
        raise ProviderError(f"the Docker Engine sent an unreadable path stat for {path!r}") from exc
    return PathStat(
        name=stat.get("name", ""),
        size=int(stat.get("size", 0)),
        mode=int(stat.get("mode", 0)),
        link_target=stat.get("linkTarget", "") or "",
    )


async def _resolve(engine: EngineClient, container: str, path: str) -> tuple[str, PathStat]:
    """Follow symlinks (the Engine reports their resolved target) to an existing path."""
    for _ in range(_MAX_LINK_HOPS):
        stat = await stat_path(engine, container, path)
        if stat is None:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory in the sandbox", path)
        if not stat.is_symlink:
            return path, stat
        if not stat.link_target or stat.link_target == path:
            raise FileNotFoundError(errno.ENOENT, "dangling symbolic link in the sandbox", path)
        path = stat.link_target
    raise OSError(errno.ELOOP, "too many levels of symbolic links in the sandbox", path)


async def read_file(engine: EngineClient, container: str, path: str) -> AsyncIterator[bytes]:
    """Stream one file's bytes out of the container."""
    path, stat = await _resolve(engine, container, check_path(path))
    if stat.is_dir:
        raise IsADirectoryError(errno.EISDIR, "is a directory in the sandbox", path)
    if not stat.is_regular:
        raise OSError(errno.EINVAL, "not a regular file in the sandbox", path)
    async with engine.request("GET", _archive(container), params={"path": path}, ref=container) as response:
        reader = TarReader(response.content.iter_chunked(CHUNK))
        try:
            member = await reader.next()
            if member is None:
                raise FileNotFoundError(errno.ENOENT, "no such file in the sandbox", path)
            if not member.isreg():
                raise OSError(errno.EINVAL, "not a regular file in the sandbox", path)
            async for chunk in member_data(reader):
                yield chunk
        except TarFormatError as exc:
            raise ProviderError(f"the Docker Engine sent a broken archive for {path!r}: {exc}") from exc


async def export_tar(engine: EngineClient, container: str, path: str) -> AsyncIterator[bytes]:
    """Stream a tar of directory ``path`` whose entries are relative to it."""
    path, stat = await _resolve(engine, container, check_path(path))
    if not stat.is_dir:
        raise NotADirectoryError(errno.ENOTDIR, "not a directory in the sandbox", path)
    # "<dir>/." asks the Engine for the directory's contents named "./x".
    source = path.rstrip("/") + "/."
    async with engine.request("GET", _archive(container), params={"path": source}, ref=container) as response:
        try:
            async for chunk in reframe(response.content.iter_chunked(CHUNK), relative=True):
                yield chunk
        except TarFormatError as exc:
            raise ProviderError(f"the Docker Engine sent a broken archive for {path!r}: {exc}") from exc


async def _ensure_dir(engine: EngineClient, container: str, path: str, make_dirs: MakeDirs) -> None:
    stat = await stat_path(engine, container, path)
    if stat is None:
        await make_dirs(container, path)
    elif not stat.is_dir and not stat.is_symlink:
        raise NotADirectoryError(errno.ENOTDIR, "not a directory in the sandbox", path)


async def import_tar(
    engine: EngineClient,
    container: str,
    path: str,
    data: AsyncIterator[bytes],
    *,
    owner: tuple[int, int],
    make_dirs: MakeDirs,
) -> None:
    """Extract an uncompressed tar stream into directory ``path`` (created if missing).

    Every entry is given to ``owner``: an archive from another sandbox or
    provider carries foreign uids.
    """
    path = check_path(path)
    await _ensure_dir(engine, container, path, make_dirs)
    source_failure: list[BaseException] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            async for chunk in data:
                yield chunk
        except BaseException as exc:
            source_failure.append(exc)
            raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in reframe(source(), owner=owner):
                yield chunk
        except TarFormatError as exc:
            source_failure.append(exc)
            raise

    params = {"path": path, "noOverwriteDirNonDir": "1"}
    try:
        async with engine.request("PUT", _archive(container), params=params, data=body(), headers=_TAR, ref=container):
            pass
    except BaseException:
        # The transport wraps a failing source; the caller should see its own error.
        if source_failure:
            raise source_failure[0] from None
        raise


async def write_file(
    engine: EngineClient,
    container: str,
    path: str,
    data: AsyncIterator[bytes],
    *,
    owner: tuple[int, int],
    make_dirs: MakeDirs,
) -> None:
    """Write one file (parent directories created) from a byte stream, owned by ``owner``."""
    path = check_path(path)
    if path == "/":
        raise IsADirectoryError(errno.EISDIR, "is a directory in the sandbox", path)
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - closed below
    try:
        size = 0
        async for chunk in data:
            size += len(chunk)
            await asyncio.to_thread(spool.write, chunk)
        await asyncio.to_thread(spool.seek, 0)
        existing = await stat_path(engine, container, path)
        if existing is not None and existing.is_symlink and existing.link_target:
            # Write through a symlink, as open(2) would, rather than replace it.
            path = existing.link_target
            existing = await stat_path(engine, container, path)
        parent, name = posixpath.split(path)
        if existing is not None and existing.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory in the sandbox", path)
        await _ensure_dir(engine, container, parent, make_dirs)
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(time.time())
        info.uid, info.gid = owner
        # Overwriting keeps the file's permission bits (an executable stays one).
        info.mode = (existing.mode & 0o7777) if existing is not None else 0o644

        async def body() -> AsyncIterator[bytes]:
            yield tar_header(info)
            while chunk := await asyncio.to_thread(spool.read, CHUNK):
                yield chunk
            yield tar_padding(size) + tar_trailer()

        params = {"path": parent}
        async with engine.request("PUT", _archive(container), params=params, data=body(), headers=_TAR, ref=container):
            pass
    finally:
        await asyncio.to_thread(spool.close)


async def _small_file(engine: EngineClient, container: str, path: str, limit: int = 1 << 20) -> str:
    data = bytearray()
    try:
        async for chunk in read_file(engine, container, path):
            data += chunk
            if len(data) > limit:
                break
    except FileNotFoundError:
        return ""
    return data.decode(errors="replace")


def _lookup(database: str, name: str) -> list[str] | None:
    """The ``/etc/passwd``- or ``/etc/group``-style entry for ``name``."""
    for line in database.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name:
            return fields
    return None


async def container_owner(engine: EngineClient, container: str) -> tuple[int, int]:
    """The numeric (uid, gid) the container's processes run as, from its own passwd/group."""
    info = await engine.call("GET", f"containers/{container}/json", ref=container)
    user, _, group = str((info.get("Config") or {}).get("User") or "").partition(":")
    if not user:
        return 0, 0
    uid = gid = None
    if user.isdigit():
        uid = int(user)
    else:
        entry = _lookup(await _small_file(engine, container, "/etc/passwd"), user)
        if entry is None:
            raise ProviderError(f"user {user!r} of container {container!r} is not in its /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    if group.isdigit():
        gid = int(group)
    elif group:
        entry = _lookup(await _small_file(engine, container, "/etc/group"), group)
        gid = int(entry[2]) if entry is not None else None
    return uid, gid if gid is not None else uid
