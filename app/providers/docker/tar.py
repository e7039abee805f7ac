"""Streaming tar over async byte streams, for the Engine's archive API.

The archive API speaks tar in both directions. ``tarfile`` wants a seekable
file or a blocking stream, so this module reads and writes the format a block
at a time: ``TarStreamReader`` yields members and their data as chunks arrive;
``tar_header``/``tar_trailer`` frame data the caller streams. Nothing here
holds more than one chunk (plus a header) in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator

BLOCK = 512
#: Member types whose header is followed by ``size`` bytes of data.
_DATA_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
#: PAX keys that ``tarfile`` applies to the header fields itself.
_PAX_FIELDS = {"path": "name", "linkpath": "linkname", "uname": "uname", "gname": "gname"}
_PAX_NUMBERS = {"size": "size", "uid": "uid", "gid": "gid", "mtime": "mtime"}
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class TarFormatError(ValueError):
    """The byte stream is not a tar archive this reader understands."""


def _padding(size: int) -> int:
    return -size % BLOCK


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX records: ``"<len> <key>=<value>\\n"`` repeated."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError as exc:
            raise TarFormatError("malformed PAX header") from exc
        if length <= space - pos:
            raise TarFormatError("malformed PAX header")
        record = data[space + 1 : pos + length - 1]  # drop the trailing newline
        key, _, value = record.partition(b"=")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


class TarStreamReader:
    """Reads tar members from an async iterator of byte chunks.

    Usage: ``while (member := await reader.next_member()) is not None:`` then
    either ``async for chunk in reader.member_data()`` or let ``next_member``
    skip the data.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._remaining = 0  # data bytes of the current member not yet consumed
        self._pad = 0

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return False
            self._buffer += chunk
        return True

    async def _read_exact(self, size: int) -> bytes:
        if not await self._fill(size):
            raise TarFormatError("tar stream ended inside a member")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _skip_rest(self) -> None:
        async for _ in self.member_data():
            pass

    async def next_member(self) -> tarfile.TarInfo | None:
        """The next member's header (PAX and GNU long names applied), or ``None`` at the end."""
        await self._skip_rest()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            if not await self._fill(BLOCK):
                if self._buffer:
                    raise TarFormatError("tar stream ends with a partial block")
                return None
            block = await self._read_exact(BLOCK)
            if block.count(0) == BLOCK:
                return None  # end-of-archive marker
            try:
                info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
            except tarfile.HeaderError as exc:
                raise TarFormatError(f"bad tar header: {exc}") from exc
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                payload = await self._read_exact(info.size + _padding(info.size))
                payload = payload[: info.size]
                if info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(payload))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = payload.rstrip(b"\0").decode(_ENCODING, _ERRORS)
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = payload.rstrip(b"\0").decode(_ENCODING, _ERRORS)
                continue  # global PAX headers are ignored, as tarfile's do not reach members either
            break
        if long_name is not None:
            info.name = long_name
        if long_link is not None:
            info.linkname = long_link
        extra = {}
        for key, value in pax.items():
            if key in _PAX_FIELDS:
                setattr(info, _PAX_FIELDS[key], value)
            elif key in _PAX_NUMBERS:
                try:
                    number = float(value) if key == "mtime" else int(value)
                except ValueError as exc:
                    raise TarFormatError(f"bad PAX {key}: {value!r}") from exc
                setattr(info, _PAX_NUMBERS[key], number)
            else:
                extra[key] = value
        info.pax_headers = extra
        if info.isdir():
            info.name = info.name.rstrip("/")
        self._remaining = info.size if info.type in _DATA_TYPES else 0
        self._pad = _padding(self._remaining)
        return info

    async def drain(self) -> None:
        """Consume and drop whatever the source still has after the archive's end."""
        self._buffer.clear()
        async for _ in self._chunks:
            pass

    async def member_data(self) -> AsyncIterator[bytes]:
        """The current member's data, as it arrives."""
        while self._remaining > 0:
            if not self._buffer and not await self._fill(1):
                raise TarFormatError("tar stream ended inside a member")
            take = min(self._remaining, len(self._buffer))
            chunk = bytes(self._buffer[:take])
            del self._buffer[:take]
            self._remaining -= take
            yield chunk
        if self._pad:
            await self._read_exact(self._pad)
            self._pad = 0


def tar_header(info: tarfile.TarInfo) -> bytes:
    """The header block(s) for ``info`` (PAX where a field does not fit ustar)."""
    return info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS)


def tar_padding(size: int) -> bytes:
    """Zero bytes that complete a member of ``size`` data bytes to a block."""
    return b"\0" * _padding(size)


def tar_trailer() -> bytes:
    """The end-of-archive marker: two zero blocks."""
    return b"\0" * (2 * BLOCK)


def strip_dot_prefix(name: str) -> str:
    """``./a/b`` → ``a/b``; ``.`` and ``./`` → ``""`` (the root itself)."""
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name


async def reframe(
    chunks: AsyncIterator[bytes], *, relative: bool = False, owner: tuple[int, int] | None = None
) -> AsyncIterator[bytes]:
    """Re-frame an archive member by member; data passes through chunk by chunk.

    ``relative``: the archive is the Engine's ``<dir>/.`` (entries ``./x``);
    name entries ``x`` and drop the root entry. Hard-link targets are renamed
    the same way (symlink targets are file-system paths, left as they are).
    ``owner``: give every entry this numeric (uid, gid), names cleared.
    """
    reader = TarStreamReader(chunks)
    while (member := await reader.next_member()) is not None:
        if relative:
            member.name = strip_dot_prefix(member.name)
            if not member.name:
                continue
            if member.islnk():
                member.linkname = strip_dot_prefix(member.linkname)
        if owner is not None:
            member.uid, member.gid = owner
            member.uname = member.gname = ""
        if member.type not in _DATA_TYPES:
            member.size = 0
        yield tar_header(member)
        async for chunk in reader.member_data():
            yield chunk
        yield tar_padding(member.size)
    # Read the source to its end (record padding) so a check it makes at the end,
    # such as a hash verification, still runs and can fail the whole transfer.
    await reader.drain()
    yield tar_trailer()
