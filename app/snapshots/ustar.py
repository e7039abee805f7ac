"""Fast decoding and encoding of the plain ustar header blocks nearly every member uses.

``tarfile.TarInfo.frombuf`` and ``tobuf`` cost tens of microseconds per member; a
workspace of tens of thousands of small files makes them the main CPU cost of a
restore (which runs next to ``tar -x`` on the same cores). These functions give
*identical* results for the common shapes and hand everything else to ``tarfile``:

* ``decode_header``: same ``TarInfo`` fields as ``frombuf`` (same checksum rule,
  ustar prefix, V7 directories); base-256 numbers, sparse members and checksums that
  only match the signed sum go through ``frombuf``.
* ``encode_header``: the same bytes as ``tobuf(PAX_FORMAT)`` for a member that needs
  no pax extension (ASCII names within the ustar fields, integral numbers within
  their octal fields, no pax headers); otherwise ``tobuf`` itself.

The unit tests compare both against ``tarfile`` on every shape the fast paths take.
"""

from __future__ import annotations

import tarfile

ENCODING = "utf-8"
#: Names that are not UTF-8 survive a round trip byte for byte.
ERRORS = "surrogateescape"

_BASE256 = (0o200, 0o377)
#: (offset, width) of mode, uid, gid, size, mtime, devmajor, devminor.
_NUMBER_FIELDS = ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (329, 8), (337, 8))
#: First byte of each numeric field, the checksum included.
_NUMBER_STARTS = (148, *(start for start, _ in _NUMBER_FIELDS))
_MAX_ID = 8**7
_MAX_BIG = 8**11
_TAIL = bytes(8 + 8 + 155 + 12)  # devmajor, devminor, prefix, padding


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(ENCODING, ERRORS)


def _number(field: bytes) -> int:
    # As tarfile.nti for an octal field (base-256 fields never get here); ValueError if bad.
    end = field.find(b"\0")
    return int((field if end < 0 else field[:end]).decode("ascii").strip() or "0", 8)


def decode_header(block: bytes) -> tarfile.TarInfo:
    """``TarInfo.frombuf(block, "utf-8", "surrogateescape")`` for a 512-byte, non-zero block.

    Raises ``tarfile.TarError`` (or ``ValueError``) for an invalid header, as ``frombuf``.
    """
    kind = block[156:157]
    if (
        kind == tarfile.GNUTYPE_SPARSE
        or len(block) != tarfile.BLOCKSIZE
        or any(block[start] in _BASE256 for start in _NUMBER_STARTS)
    ):
        return tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
    try:
        chksum = _number(block[148:156])
        numbers = [_number(block[start : start + width]) for start, width in _NUMBER_FIELDS]
    except ValueError:
        # Not octal: tarfile raises the error it raises for that (InvalidHeaderError).
        return tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
    if chksum != 256 + sum(block) - sum(block[148:156]):
        # Wrong, or one of the old tars that summed signed bytes: let tarfile decide.
        return tarfile.TarInfo.frombuf(block, ENCODING, ERRORS)
    info = tarfile.TarInfo()
    name = _text(block[0:100])
    info.mode, info.uid, info.gid, info.size, info.mtime, info.devmajor, info.devminor = numbers
    info.chksum = chksum
    info.type = kind
    info.linkname = _text(block[157:257])
    info.uname = _text(block[265:297])
    info.gname = _text(block[297:329])
    prefix = _text(block[345:500])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        info.type = kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    if prefix and kind not in tarfile.GNU_TYPES:
        name = prefix + "/" + name
    info.name = name
    return info


def _ascii(text: object, limit: int) -> bytes | None:
    if type(text) is not str or len(text) > limit or not text.isascii():
        return None
    return text.encode("ascii")


def encode_header(info: tarfile.TarInfo) -> bytes:
    """``info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")``, faster when no pax header is needed."""
    kind = info.type
    name = info.name + "/" if kind == tarfile.DIRTYPE and not info.name.endswith("/") else info.name
    fields = (
        _ascii(name, 100),
        _ascii(info.linkname, 100),
        _ascii(info.uname, 32),
        _ascii(info.gname, 32),
    )
    numbers = (info.mode, info.uid, info.gid, info.size, info.mtime)
    plain = (
        None not in fields
        and not info.pax_headers
        and kind not in (tarfile.CHRTYPE, tarfile.BLKTYPE)
        and type(kind) is bytes
        and len(kind) == 1
        and all(type(n) is int for n in numbers)
        and 0 <= info.uid < _MAX_ID
        and 0 <= info.gid < _MAX_ID
        and 0 <= info.size < _MAX_BIG
        and 0 <= info.mtime < _MAX_BIG
    )
    if not plain:
        return info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS)
    name_b, link_b, uname_b, gname_b = fields
    assert name_b is not None and link_b is not None and uname_b is not None and gname_b is not None
    head = b"".join(
        (
            name_b.ljust(100, b"\0"),
            b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (info.mode & 0o7777, info.uid, info.gid, info.size, int(info.mtime)),
            b"        ",
            kind,
            link_b.ljust(100, b"\0"),
            tarfile.POSIX_MAGIC,
            uname_b.ljust(32, b"\0"),
            gname_b.ljust(32, b"\0"),
            _TAIL,
        )
    )
    return head[:148] + b"%06o\0" % sum(head) + head[155:]
