"""Tar framing for the Engine's archive API, over async byte streams.

The archive API speaks tar in both directions. Members are parsed by the one
streaming tar reader of the tree (``app.snapshots.tarstream.TarReader``);
this module only frames: ``reframe`` re-emits an archive member by member
(renamed or re-owned on the way) and ``tar_header``/``tar_padding``/
``tar_trailer`` frame data the caller streams. Nothing here holds more than
one chunk (plus a header) in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator

from app.snapshots.tarstream import BLOCK, TarReader
from app.snapshots.ustar import encode_header

#: Bytes a source may still send after the end-of-archive marker (record padding).
MAX_TRAILING_BYTES = 1 << 20
#: Member data is passed on in pieces of at most this size.
_PIECE = 1 << 20


def tar_header(info: tarfile.TarInfo) -> bytes:
    """The header block(s) for ``info`` (PAX where a field does not fit ustar)."""
    return encode_header(info)


def tar_padding(size: int) -> bytes:
    """Zero bytes that complete a member of ``size`` data bytes to a block."""
    return b"\0" * (-size % BLOCK)


def tar_trailer() -> bytes:
    """The end-of-archive marker: two zero blocks."""
    return b"\0" * (2 * BLOCK)


def strip_dot_prefix(name: str) -> str:
    """``./a/b`` → ``a/b``; ``.`` and ``./`` → ``""`` (the root itself)."""
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name


async def member_data(reader: TarReader) -> AsyncIterator[bytes]:
    """The current member's data, as it arrives."""
    while piece := await reader.read(_PIECE):
        yield piece


async def reframe(
    chunks: AsyncIterator[bytes], *, relative: bool = False, owner: tuple[int, int] | None = None
) -> AsyncIterator[bytes]:
    """Re-frame an archive member by member; data passes through chunk by chunk.

    ``relative``: the archive is the Engine's ``<dir>/.`` (entries ``./x``);
    name entries ``x`` and drop the root entry. Hard-link targets are renamed
    the same way (symlink targets are file-system paths, left as they are).
    ``owner``: give every entry this numeric (uid, gid), names cleared.
    A malformed archive raises ``TarFormatError``.
    """
    reader = TarReader(chunks, keep_pax_records=True)
    while (member := await reader.next()) is not None:
        if relative:
            member.name = strip_dot_prefix(member.name)
            if not member.name:
                continue
            if member.islnk():
                member.linkname = strip_dot_prefix(member.linkname)
        if owner is not None:
            member.uid, member.gid = owner
            member.uname = member.gname = ""
        yield tar_header(member)
        async for chunk in member_data(reader):
            yield chunk
        yield tar_padding(member.size)
    # Read the source to its end (record padding) so a check it makes at the end,
    # such as a hash verification, still runs and can fail the whole transfer.
    await reader.drain(MAX_TRAILING_BYTES)
    yield tar_trailer()
