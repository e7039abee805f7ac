"""Incremental tar parsing and emission over async byte streams, in bounded memory.

``TarReader`` pulls headers and member data out of an ``AsyncIterator[bytes]`` one
block at a time; it never holds more than one incoming chunk plus one member's
extension header (long name, pax records, at most ``MAX_EXTENSION_BYTES``). It reads
the ustar, GNU (``L``/``K`` long names, base-256 numbers) and POSIX pax formats that
GNU tar, bsdtar and Python's ``tarfile`` write. Header blocks are decoded by
``ustar.decode_header`` (``TarInfo.frombuf``, faster); everything that needs the
stream (extensions, data, padding) is handled here. Sparse members are refused: no
snapshot needs them. ``next_plain`` hands a member in one plain header block over
undecoded (``plain``), for the snapshot writer's fast path.

``TarEmitter`` writes members back as a pax-format tar into an in-memory batch that
the caller drains as it grows, so the output is streamed too.

Errors are ``TarFormatError`` (a plain ``ValueError``); the snapshot reader turns
them into ``SnapshotCorrupt``, the writer into a provider error.
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator

from app.snapshots.plain import PlainHeader, decode_plain
from app.snapshots.ustar import ENCODING, ERRORS, decode_header, encode_header

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
ZERO_BLOCK = bytes(BLOCK)
#: Largest long-name or pax extension payload accepted for one member.
MAX_EXTENSION_BYTES = 1 << 20
#: Consecutive empty chunks tolerated from a source before it is deemed broken.
MAX_EMPTY_CHUNKS = 100_000

REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
#: Pax records ``TarReader`` applies to the header fields themselves.
APPLIED_PAX_KEYS = frozenset({"path", "linkpath", "size", "uid", "gid", "mtime", "uname", "gname"})
_EXTENSION_TYPES = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
)


class TarFormatError(ValueError):
    """The byte stream is not a well-formed tar archive."""


class ByteReader:
    """Exact-size reads over an async chunk iterator, buffering at most one chunk."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        #: Bytes handed out so far (the offset of the next byte).
        self.offset = 0

    async def _refill(self) -> bool:
        for _ in range(MAX_EMPTY_CHUNKS):
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return False
            if chunk:
                self._buf = chunk if type(chunk) is bytes else bytes(chunk)
                self._pos = 0
                return True
        raise TarFormatError("the source keeps yielding empty chunks")

    async def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (at least one), or ``b""`` at the end of the stream."""
        if self._pos >= len(self._buf) and not await self._refill():
            return b""
        take = min(limit, len(self._buf) - self._pos)
        # A whole chunk is passed on as is, without a copy.
        out = self._buf if take == len(self._buf) else self._buf[self._pos : self._pos + take]
        self._pos += take
        self.offset += take
        return out

    async def read_exact(self, size: int) -> bytes | None:
        """Exactly ``size`` bytes; ``None`` if the stream ended before the first byte."""
        parts: list[bytes] = []
        got = 0
        while got < size:  # every pass gains >= 1 byte or ends
            piece = await self.read_some(size - got)
            if not piece:
                if got == 0:
                    return None
                raise TarFormatError(f"archive truncated at byte {self.offset}")
            parts.append(piece)
            got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def skip(self, size: int) -> None:
        """Discard exactly ``size`` bytes."""
        left = size
        while left > 0:
            piece = await self.read_some(min(left, 1 << 20))
            if not piece:
                raise TarFormatError(f"archive truncated at byte {self.offset}")
            left -= len(piece)


def _cstring(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(ENCODING, ERRORS)


def parse_pax(payload: bytes) -> dict[str, str]:
    """Parse pax extended-header records (``"<len> <key>=<value>\\n"``)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload):  # every record advances pos by its positive length
        space = payload.find(b" ", pos, pos + 21)
        if space < 0 or not payload[pos:space].isdigit():
            if not payload[pos:].strip(b"\0"):
                break  # trailing NUL padding
            raise TarFormatError("malformed pax record length")
        length = int(payload[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(payload) or payload[end - 1 : end] != b"\n":
            raise TarFormatError("malformed pax record")
        key, eq, value = payload[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise TarFormatError("pax record without '='")
        records[key.decode(ENCODING, ERRORS)] = value.decode(ENCODING, ERRORS)
        pos = end
    return records


def _pax_int(records: dict[str, str], key: str) -> int | None:
    if key not in records:
        return None
    try:
        return int(records[key])
    except ValueError:
        raise TarFormatError(f"pax {key}={records[key]!r} is not an integer") from None


class TarReader:
    """Pull-style tar parser: ``next()`` returns each member, ``read()`` its data.

    ``keep_pax_records``: leave the pax records it does not apply to the header fields
    (extended attributes, atime, ...) in ``info.pax_headers``, for a re-framer that
    passes members on as they are; by default members carry none.
    """

    def __init__(self, chunks: AsyncIterator[bytes], *, keep_pax_records: bool = False) -> None:
        self._src = ByteReader(chunks)
        self._keep_pax = keep_pax_records
        self._remaining = 0
        self._padding = 0
        self.ended = False

    @property
    def offset(self) -> int:
        """Bytes consumed from the source so far."""
        return self._src.offset

    async def next(self) -> tarfile.TarInfo | None:
        """The next member (unread data of the previous one is skipped); ``None`` at the end marker."""
        member = await self._next(plain=False)
        assert not isinstance(member, PlainHeader)
        return member

    async def next_plain(self) -> PlainHeader | tarfile.TarInfo | None:
        """As ``next``, but a plain member (``plain.decode_plain``) comes undecoded, as its ``PlainHeader``."""
        return await self._next(plain=True)

    async def _next(self, *, plain: bool) -> PlainHeader | tarfile.TarInfo | None:
        if self.ended:
            return None
        while self._remaining:
            await self.read(1 << 20)
        await self._skip_padding()
        longname: str | None = None
        longlink: str | None = None
        pax: dict[str, str] = {}
        for _ in range(64):  # a member has a handful of extension headers at most
            start = self._src.offset
            block = await self._src.read_exact(BLOCK)
            if block is None:
                raise TarFormatError(f"archive ends at byte {start} without an end-of-archive marker")
            if block == ZERO_BLOCK:
                self.ended = True
                return None
            if plain and longname is None and longlink is None and not pax:
                member = decode_plain(block)
                if member is not None:
                    self._remaining = member.size
                    self._padding = -member.size % BLOCK
                    return member
            try:
                info = decode_header(block)
            except (tarfile.TarError, ValueError) as exc:
                raise TarFormatError(f"invalid tar header at byte {start}: {exc}") from None
            if info.type not in _EXTENSION_TYPES:
                return self._member(info, longname, longlink, pax)
            if info.size > MAX_EXTENSION_BYTES:
                raise TarFormatError(f"extension header of {info.size} bytes at byte {start} is too large")
            raw = await self._src.read_exact(info.size + (-info.size % BLOCK))
            payload = (raw or b"")[: info.size]
            if len(payload) < info.size:
                raise TarFormatError(f"archive truncated at byte {self._src.offset}")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                longname = _cstring(payload)
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                longlink = _cstring(payload)
            elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                pax.update(parse_pax(payload))
            # XGLTYPE: global pax headers set archive defaults we never rely on; ignored.
        raise TarFormatError("too many consecutive extension headers")

    def _member(
        self, info: tarfile.TarInfo, longname: str | None, longlink: str | None, pax: dict[str, str]
    ) -> tarfile.TarInfo:
        if info.type == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.sparse.") for k in pax):
            raise TarFormatError(f"sparse member {info.name!r} is not supported")
        name = pax.get("path", longname)
        if name is not None:
            info.name = name
            if info.type == tarfile.AREGTYPE and name.endswith("/"):
                info.type = tarfile.DIRTYPE
            if info.type == tarfile.DIRTYPE:
                info.name = name.rstrip("/") or name
        link = pax.get("linkpath", longlink)
        if link is not None:
            info.linkname = link
        for key in ("size", "uid", "gid"):
            value = _pax_int(pax, key)
            if value is not None:
                setattr(info, key, value)
        if "mtime" in pax:
            try:
                mtime = float(pax["mtime"])
            except ValueError:
                raise TarFormatError(f"pax mtime={pax['mtime']!r} is not a number") from None
            info.mtime = int(mtime) if mtime.is_integer() else mtime
        info.uname = pax.get("uname", info.uname)
        info.gname = pax.get("gname", info.gname)
        info.pax_headers = {k: v for k, v in pax.items() if k not in APPLIED_PAX_KEYS} if self._keep_pax else {}
        if info.size < 0:
            raise TarFormatError(f"member {info.name!r} has a negative size")
        # As tarfile: only regular members (and unknown types) carry data blocks.
        carries_data = info.type in REGULAR_TYPES or info.type not in tarfile.SUPPORTED_TYPES
        self._remaining = info.size if carries_data else 0
        self._padding = -self._remaining % BLOCK
        if not carries_data:
            info.size = 0
        return info

    async def read(self, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of the current member's data; ``b""`` once it is all read."""
        if self._remaining <= 0:
            await self._skip_padding()
            return b""
        piece = await self._src.read_some(min(limit, self._remaining))
        if not piece:
            raise TarFormatError(f"archive truncated inside a member at byte {self._src.offset}")
        self._remaining -= len(piece)
        if self._remaining == 0:
            await self._skip_padding()
        return piece

    async def _skip_padding(self) -> None:
        if self._padding:
            padding, self._padding = self._padding, 0
            await self._src.skip(padding)

    async def drain(self, limit: int) -> int:
        """After the end marker, consume what follows (record padding); at most ``limit`` bytes."""
        total = 0
        while True:  # bounded: raises once total exceeds limit
            piece = await self._src.read_some(1 << 20)
            if not piece:
                return total
            total += len(piece)
            if total > limit:
                raise TarFormatError(f"more than {limit} bytes follow the end-of-archive marker")


def clean_member(info: tarfile.TarInfo, name: str, *, mode: int, linkname: str = "") -> tarfile.TarInfo:
    """A fresh header carrying only the fields a snapshot keeps (no xattrs, no pax extras)."""
    out = tarfile.TarInfo(name)
    out.type = tarfile.REGTYPE if info.type in REGULAR_TYPES else info.type
    out.mode = mode
    out.uid, out.gid = info.uid, info.gid
    out.uname, out.gname = info.uname, info.gname
    out.mtime = info.mtime
    out.size = info.size if out.type == tarfile.REGTYPE else 0
    out.linkname = linkname
    return out


class TarEmitter:
    """Builds a pax-format tar stream into a batch the caller drains with ``take()``."""

    def __init__(self) -> None:
        # Pieces, joined once by take(): member data is copied once, not per append.
        self._parts: list[bytes] = []
        self._pending = 0
        #: Bytes emitted so far, padding and end marker included.
        self.size = 0

    @property
    def pending(self) -> int:
        """Bytes waiting in the batch."""
        return self._pending

    def _put(self, data: bytes) -> None:
        self._parts.append(data)
        self._pending += len(data)
        self.size += len(data)

    def header(self, info: tarfile.TarInfo) -> bytes:
        """Append a member header (with its pax extension when needed); return its bytes."""
        data = encode_header(info)
        self._put(data)
        return data

    def raw_header(self, data: bytes) -> None:
        """Append a header already encoded (``plain.encode_plain``)."""
        self._put(data)

    def data(self, piece: bytes) -> None:
        """Append member data (held by reference until ``take()`` joins the batch)."""
        self._put(bytes(piece) if type(piece) is not bytes else piece)

    def end_member(self, size: int) -> None:
        """Pad the member's data (``size`` bytes) to a whole block."""
        if size % BLOCK:
            self._put(ZERO_BLOCK[: BLOCK - size % BLOCK])

    def finish(self) -> None:
        """Append the end-of-archive marker and pad to a whole record, as GNU tar does."""
        self._put(bytes(2 * BLOCK))
        if self.size % RECORD:
            self._put(bytes(RECORD - self.size % RECORD))

    def take(self) -> bytes:
        """Remove and return the batch."""
        out = b"".join(self._parts)
        self._parts.clear()
        self._pending = 0
        return out
