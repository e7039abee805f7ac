"""The tar re-framer used with the Engine's archive API, on the tree's one streaming tar reader."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator

import pytest

from app.providers.docker.tar import member_data, reframe
from app.snapshots.tarstream import TarFormatError, TarReader


def make_tar(fmt: int, prefix: str = "./") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        root = tarfile.TarInfo(prefix.rstrip("/") or ".")
        root.type = tarfile.DIRTYPE
        archive.addfile(root)
        for name, data in (("a.txt", b"alpha"), ("d/" + "long" * 40, b"x" * 1500), ("d/empty", b"")):
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            info.uid = 4242
            info.uname = "someone"
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(prefix + "hard")
        link.type = tarfile.LNKTYPE
        link.linkname = prefix + "a.txt"
        archive.addfile(link)
        sym = tarfile.TarInfo(prefix + "sym")
        sym.type = tarfile.SYMTYPE
        sym.linkname = "a.txt"
        archive.addfile(sym)
    return buffer.getvalue()


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            extracted = archive.extractfile(member) if member.isreg() else None
            out[member.name] = (member, extracted.read() if extracted else b"")
    return out


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
async def test_relative_reframe_any_format_and_chunking(fmt: int, chunk: int) -> None:
    out = members(await collect(reframe(in_chunks(make_tar(fmt), chunk), relative=True)))
    long_name = "d/" + "long" * 40
    assert set(out) == {"a.txt", long_name, "d/empty", "hard", "sym"}
    assert out["a.txt"][1] == b"alpha"
    assert out[long_name][1] == b"x" * 1500
    assert out["hard"][0].islnk() and out["hard"][0].linkname == "a.txt"
    assert out["sym"][0].issym() and out["sym"][0].linkname == "a.txt"
    assert out["a.txt"][0].uid == 4242


async def test_owner_rewrite_keeps_names() -> None:
    out = members(await collect(reframe(in_chunks(make_tar(tarfile.PAX_FORMAT, prefix=""), 700), owner=(1000, 1001))))
    assert "a.txt" in out
    assert {(m.uid, m.gid, m.uname) for m, _ in out.values()} == {(1000, 1001, "")}


async def test_reader_yields_data_incrementally() -> None:
    reader = TarReader(in_chunks(make_tar(tarfile.PAX_FORMAT), 100))
    names = []
    while (member := await reader.next()) is not None:
        names.append(member.name)
        if member.name == "./a.txt":
            assert [c async for c in member_data(reader)] == [b"alpha"]
    assert names[0] == "." and "./d/empty" in names


async def test_truncated_and_garbage_streams_are_errors() -> None:
    data = make_tar(tarfile.PAX_FORMAT)
    with pytest.raises(TarFormatError):
        await collect(reframe(in_chunks(data[:2000], 512)))
    with pytest.raises(TarFormatError):
        await collect(reframe(in_chunks(b"garbage!" * 128, 512)))


async def test_source_is_read_to_its_end() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield make_tar(tarfile.PAX_FORMAT)
        raise ValueError("checked at the end")

    with pytest.raises(ValueError, match="at the end"):
        await collect(reframe(source()))


async def test_pax_records_pass_through() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("./ping")
        info.size = 4
        info.pax_headers = {"SCHILY.xattr.security.capability": "caps", "atime": "1700000000.5"}
        archive.addfile(info, io.BytesIO(b"\x7fELF"))
    out = members(await collect(reframe(in_chunks(buffer.getvalue(), 300), relative=True)))
    assert out["ping"][1] == b"\x7fELF"
    assert out["ping"][0].pax_headers["SCHILY.xattr.security.capability"] == "caps"
    assert out["ping"][0].pax_headers["atime"] == "1700000000.5"


async def test_trailing_bytes_past_the_end_marker_are_bounded() -> None:
    with pytest.raises(TarFormatError, match="follow the end-of-archive marker"):
        await collect(reframe(in_chunks(make_tar(tarfile.PAX_FORMAT) + bytes(2 << 20), 1 << 16)))
