"""Comparing directory trees by content: type, mode, size, data, link target, mtime, hard links."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

from app.providers.local.io import close_transport


def tree_entries(root: Path, *, mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """One tuple per entry below ``root`` (the root itself excluded), keyed by relative path.

    Files: ("file", mode, size, sha256, mtime, hard-link group). The group is the
    lexically first path sharing the inode, so two trees match only if the same names
    are linked together. Symlinks: ("symlink", target) (their own mtime and mode are not
    portably restorable). Directories: ("dir", mode, mtime).
    """
    entries: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            mtime = st.st_mtime_ns // 1_000_000_000 if mtimes else 0
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                entries[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, digest, mtime)
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            else:
                entries[rel] = ("special", stat.S_IFMT(st.st_mode))
    for names in inodes.values():
        group = min(names)
        for rel in names:
            entries[rel] = (*entries[rel], group)
    return entries


def tree_hash(root: Path, *, mtimes: bool = True) -> str:
    """A digest of ``tree_entries``: equal trees, equal hashes."""
    digest = hashlib.sha256()
    for rel, entry in sorted(tree_entries(root, mtimes=mtimes).items()):
        digest.update(repr((rel, entry)).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


# -- building, streaming and extracting trees -------------------------------------

#: A base mtime for sample trees (integer seconds: GNU tar's default format keeps no fraction).
BASE_MTIME = 1_700_000_000


def build_sample_tree(root: Path) -> Path:
    """A tree exercising what a workspace holds: big, empty and executable files,
    symlinks (internal, climbing, dangling, to a directory), hard links, empty and
    private directories, unicode, spaces and a name longer than ustar's 100 bytes."""
    root.mkdir(parents=True, exist_ok=True)
    big = os.urandom(1 << 20) + b"compressible " * 160_000
    files: dict[str, tuple[bytes, int]] = {
        "big.bin": (big, 0o644),
        "empty.txt": (b"", 0o644),
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "private.key": (b"not really a key\n", 0o600),
        "dir with space/ünïcødé 文件.txt": ("héllo wörld\n".encode(), 0o644),
        "nested/deep/a/b/c/leaf.txt": (b"leaf\n", 0o664),
        "x" * 120 + "/" + "long-name-" + "y" * 140 + ".txt": (b"long\n", 0o644),
    }
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (root / "empty dir").mkdir()
    (root / "restricted dir").mkdir(mode=0o700)
    (root / "restricted dir").chmod(0o700)
    os.symlink("big.bin", root / "link_to_file")
    os.symlink("../../../run.sh", root / "nested/deep/a/up")
    os.symlink("does-not-exist", root / "dangling")
    os.symlink("nested", root / "dir_link")
    os.link(root / "big.bin", root / "hard.bin")
    os.link(root / "run.sh", root / "nested/hard_run.sh")
    # mtimes last, deepest first, so creating children does not bump them again.
    all_paths = sorted(root.rglob("*"), key=lambda p: (-len(p.parts), str(p)))
    for i, path in enumerate(all_paths):
        if not path.is_symlink():
            os.utime(path, (BASE_MTIME + i, BASE_MTIME + 7 * i))
    return root


async def tar_stream(root: Path, *, tool: str = "gnu", chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """Stream a tar of ``root`` (entries ``./...``) the way a provider's export_tar does.

    ``tool="gnu"``: GNU tar (gnu format, L/K long names); ``"python"``: tarfile, pax format.
    """
    if tool == "gnu":
        proc = await asyncio.create_subprocess_exec(
            "tar", "-C", str(root), "-cf", "-", ".", stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            while data := await proc.stdout.read(chunk):
                yield data
            assert await proc.wait() == 0
        finally:
            # A consumer that stopped early (or was cancelled): end tar and close its pipes now,
            # not when the garbage collector finds them after this test's loop is gone.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            close_transport(proc)
        return
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")
    data = buffer.getvalue()
    for offset in range(0, len(data), chunk):
        yield data[offset : offset + chunk]


async def tar_extract(stream: AsyncIterator[bytes], dest: Path) -> tuple[int, bytes]:
    """Feed ``stream`` to ``tar -x`` in ``dest``; return (exit code, stderr).

    If the stream raises, tar's input is closed (it sees a truncated archive) and the
    exception propagates once tar has exited.
    """
    dest.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "tar", "-xpf", "-", "-C", str(dest),
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    try:
        async for piece in stream:
            proc.stdin.write(piece)
            await proc.stdin.drain()
    finally:
        proc.stdin.close()
        try:
            stderr = await proc.stderr.read()
            code = await proc.wait()
        finally:
            # Cancelled while tar finishes (another lane failed): kill it and close its pipes
            # now, or the garbage collector closes them later on a loop that has ended.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            close_transport(proc)
    return code, stderr


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    """All bytes of a stream."""
    return b"".join([piece async for piece in stream])


async def stream_of(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` as a chunked async stream."""
    for offset in range(0, len(data), chunk):
        yield data[offset : offset + chunk]
