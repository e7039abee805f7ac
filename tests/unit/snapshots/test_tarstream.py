"""The incremental tar reader and emitter, against archives written by tarfile and GNU tar."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from app.snapshots.tarstream import TarEmitter, TarFormatError, TarReader, parse_pax
from tests.support_tree import stream_of

LONG_DATA = os.urandom(5000)


def make_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    out: list[tuple[tarfile.TarInfo, bytes]] = []

    def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: object) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data)
        info.mtime = 1_700_000_000
        for key, value in fields.items():
            setattr(info, key, value)
        out.append((info, data))

    add("dir", tarfile.DIRTYPE, mode=0o755)
    add("dir/small.txt", data=b"hello", mode=0o644)
    add("dir/" + "n" * 150, data=LONG_DATA)  # long name
    add("dir/ünïcødé 文件", data=b"u")
    add("dir/link", tarfile.SYMTYPE, linkname="../" + "t" * 120)  # long link
    add("dir/hard", tarfile.LNKTYPE, linkname="dir/small.txt")
    add("dir/bigid", data=b"x", uid=3_000_000, gid=4_000_000, uname="someone", gname="group")
    add("dir/frac", data=b"f", mtime=1_700_000_000.5)
    add("dir/empty", data=b"")
    return out


def archive(fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in make_members():
            if fmt == tarfile.GNU_FORMAT and isinstance(info.mtime, float):
                info.mtime = int(info.mtime)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def read_all(data: bytes, chunk: int) -> list[tuple[tarfile.TarInfo, bytes]]:
    reader = TarReader(stream_of(data, chunk))
    out = []
    for _ in range(1000):
        info = await reader.next()
        if info is None:
            break
        parts = []
        while piece := await reader.read(7000):
            parts.append(piece)
        out.append((info, b"".join(parts)))
    await reader.drain(1 << 20)
    return out


@pytest.mark.parametrize(
    ("fmt", "chunk"),
    [
        (tarfile.PAX_FORMAT, 1),
        *((f, c) for f in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT) for c in (511, 4096, 1 << 20)),
    ],
)
async def test_reads_what_tarfile_wrote(fmt: int, chunk: int) -> None:
    got = await read_all(archive(fmt), chunk)
    expected = make_members()
    assert [i.name for i, _ in got] == [i.name for i, _ in expected]
    for (info, data), (want, want_data) in zip(got, expected, strict=True):
        assert data == want_data
        assert info.type == want.type
        assert info.linkname == want.linkname
        assert info.uid == want.uid and info.gid == want.gid
        if fmt == tarfile.PAX_FORMAT:
            assert info.mtime == want.mtime


async def test_reads_gnu_tar_output(tmp_path: Path) -> None:
    (tmp_path / "src/" / ("d" * 110)).mkdir(parents=True)
    (tmp_path / "src" / ("d" * 110) / ("f" * 120)).write_bytes(b"deep")
    os.symlink("x" * 200, tmp_path / "src/longlink")
    data = subprocess.run(["tar", "-C", str(tmp_path / "src"), "-cf", "-", "."], capture_output=True, check=True).stdout
    got = {info.name: (info, payload) for info, payload in await read_all(data, 10_000)}
    assert got["./" + "d" * 110 + "/" + "f" * 120][1] == b"deep"
    assert got["./longlink"][0].linkname == "x" * 200


async def test_skips_unread_data() -> None:
    reader = TarReader(stream_of(archive(tarfile.PAX_FORMAT), 3000))
    names = []
    for _ in range(100):
        info = await reader.next()
        if info is None:
            break
        names.append(info.name)
    assert len(names) == len(make_members())


@pytest.mark.parametrize("cut", [100, 512, 700, 1024 + 5])
async def test_truncated(cut: int) -> None:
    data = archive(tarfile.PAX_FORMAT)
    with pytest.raises(TarFormatError, match=r"truncated|without an end-of-archive"):
        await read_all(data[:cut], 4096)


async def test_missing_end_marker() -> None:
    data = archive(tarfile.PAX_FORMAT)
    body = data.rstrip(b"\0")
    body += bytes(-len(body) % 512)
    with pytest.raises(TarFormatError, match="end-of-archive"):
        await read_all(body, 4096)


async def test_bad_checksum() -> None:
    data = bytearray(archive(tarfile.PAX_FORMAT))
    data[0] ^= 0xFF
    with pytest.raises(TarFormatError, match="invalid tar header"):
        await read_all(bytes(data), 4096)


async def test_sparse_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)
    with pytest.raises(TarFormatError, match="sparse"):
        await read_all(buffer.getvalue(), 4096)


def test_parse_pax() -> None:
    assert parse_pax(b"18 path=ab/cd.txt\n12 uid=1234\n") == {"path": "ab/cd.txt", "uid": "1234"}
    for bad in (b"99 path=x\n", b"x path=y\n", b"9 pathxy\n"):
        with pytest.raises(TarFormatError):
            parse_pax(bad)


async def test_emitter_output_is_a_valid_tar() -> None:
    emitter = TarEmitter()
    for info, data in make_members():
        emitter.header(info)
        if info.type == tarfile.REGTYPE:
            emitter.data(data)
            emitter.end_member(len(data))
    emitter.finish()
    out = emitter.take()
    assert len(out) % tarfile.RECORDSIZE == 0 and emitter.size == len(out)
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.getnames() == [i.name for i, _ in make_members()]
        assert tar.extractfile("dir/small.txt").read() == b"hello"  # type: ignore[union-attr]
