"""Plain members: the header blocks nearly every member of a workspace export has, without ``TarInfo``.

A snapshot re-emits every member of the sandbox's export with a fresh header
(``safe_tar.clean_member`` then ``ustar.encode_header``). For a workspace of tens of
thousands of small files, decoding each header into a ``TarInfo``, cleaning it and
encoding it again was most of the CPU of a snapshot whose chunks are all stored
already. A *plain* member, a regular file or a directory in one ustar or GNU header
block with no extension header, no link, canonical octal numbers and nothing in the
prefix area, is decoded here from the block's bytes and written back by copying the
fields that pass unchanged (owner ids, size, mtime, owner names).

``encode_plain`` gives exactly the bytes ``encode_header(clean_member(...))`` gives
for the same member, so chunks of a snapshot written this way dedup against those
written before it; the unit tests compare both on GNU tar's and tarfile's output.
Everything else (``decode_plain`` answers ``None``) takes the general path.
"""

from __future__ import annotations

import re
import tarfile
from typing import NamedTuple

from app.snapshots.ustar import ENCODING, ERRORS, decode_header

#: mode, uid, gid, size, mtime, checksum and type, as GNU tar and tarfile write them (bytes 100-157).
_FIELDS = re.compile(rb"([0-7]{7})\0[0-7]{7}\0[0-7]{7}\0([0-7]{11})\0[0-7]{11}\0([0-7]{6})\0 ([05\0])")
_MAGICS = (b"ustar  \0", tarfile.POSIX_MAGIC)
_NO_LINK = bytes(100)
#: Device numbers, then the ustar prefix (or GNU's atime, ctime and sparse map): empty.
_EMPTY_TAIL = bytes(tarfile.BLOCKSIZE - 345)
#: The header's end from the device numbers on, as ``encode_header`` writes it.
_OUT_TAIL = bytes(tarfile.BLOCKSIZE - 329)
_NO_OWNERS = bytes(64)
_NO_DEVICE = bytes(16)
#: Device numbers as tarfile writes them for any member (GNU tar leaves them empty).
_DEVICE = re.compile(rb"[0-7]{7}\0[0-7]{7}\0")
_MAGIC_SUMS = {magic: sum(magic) for magic in _MAGICS}


class PlainHeader(NamedTuple):
    """A plain member's header block and the fields its checks need."""

    #: As in the block (``./src/a.py``; a directory's without its trailing ``/``).
    name: str
    #: A regular file (else a directory).
    regular: bool
    mode: int
    #: Data bytes that follow the header (0 for a directory).
    size: int
    block: bytes
    #: Byte sum of the fields ``encode_plain`` copies (for its checksum).
    copied_sum: int

    def tarinfo(self) -> tarfile.TarInfo:
        """The member as ``TarReader.next`` returns it, for the general path."""
        info = decode_header(self.block)
        if not self.regular:
            info.size = 0
        return info


def _owners_sum(field: bytes) -> int | None:
    """Byte sum of the owner names (bytes 265-329), if encode_header would write them back as they are."""
    if field == _NO_OWNERS:  # --numeric-owner
        return 0
    for name in (field[:32], field[32:]):
        text = name.rstrip(b"\0")
        if b"\0" in text or not text.isascii():  # bytes after a NUL, or text tarfile would put in pax
            return None
    return sum(field)


def decode_plain(block: bytes) -> PlainHeader | None:
    """The ``PlainHeader`` of a 512-byte header block, or ``None`` if it is not plain.

    ``None`` also for a block ``decode_header`` would refuse (bad checksum): the
    general path raises the error it always raised.
    """
    fields = _FIELDS.match(block, 100)
    magic = block[257:265]
    if fields is None or block[345:] != _EMPTY_TAIL or block[157:257] != _NO_LINK or magic not in _MAGICS:
        return None
    owners = _owners_sum(block[265:329])
    device = block[329:345]
    if owners is None or (device != _NO_DEVICE and _DEVICE.fullmatch(device) is None):
        return None
    mode, size, checksum, kind = fields.groups()
    copied = sum(block[108:148]) + owners
    # The checksum counts itself as 8 spaces; the link name and the prefix are zeros.
    rest = block[156] + _MAGIC_SUMS[magic] + (sum(device) if device != _NO_DEVICE else 0)
    if int(checksum, 8) != 256 + sum(block[:108]) + copied + rest:
        return None
    end = block.find(b"\0", 0, 100)
    name = (block[:100] if end < 0 else block[:end]).decode(ENCODING, ERRORS)
    directory = kind == b"5"
    if name.endswith("/"):
        if not directory:  # an old-style directory (type "\0" and a slash): general path
            return None
        name = name.rstrip("/")
    if not name:
        return None
    if directory and size.strip(b"0"):
        return None  # a directory carrying a size: the general path drops it
    return PlainHeader(name, not directory, int(mode, 8), 0 if directory else int(size, 8), block, copied)


def encode_plain(member: PlainHeader, name: str, mode: int) -> bytes | None:
    """The header ``encode_header(clean_member(...))`` writes for ``member`` renamed ``name`` with ``mode``.

    ``None`` when that header would need a pax extension (a name beyond 100 bytes or not ASCII).
    """
    if member.regular:
        kind = tarfile.REGTYPE
    else:
        kind = tarfile.DIRTYPE
        name += "/"
    if len(name) > 100 or not name.isascii():
        return None
    block = member.block
    name_b = name.encode("ascii")
    mode_b = b"%07o\0" % mode
    checksum = sum(name_b) + sum(mode_b) + member.copied_sum + 256 + kind[0] + _MAGIC_SUMS[tarfile.POSIX_MAGIC]
    return b"".join(
        (
            name_b.ljust(100, b"\0"),
            mode_b,
            block[108:148],  # uid, gid, size, mtime: the same octal text encode_header writes
            b"%06o\0 " % checksum,  # as tarfile: six digits, NUL, and the last blank
            kind,
            _NO_LINK,
            tarfile.POSIX_MAGIC,
            block[265:329],  # owner names, NUL-padded
            _OUT_TAIL,
        )
    )
