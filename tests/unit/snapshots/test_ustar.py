"""The fast ustar header paths give exactly what tarfile gives, on every shape and then some."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from app.snapshots.ustar import decode_header, encode_header

FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname", "gname")


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def shapes() -> list[tarfile.TarInfo]:
    out = [
        member("a.txt", size=5, uid=1000, gid=1000, uname="sandbox", gname="sandbox"),
        member("dir", tarfile.DIRTYPE, mode=0o2755),
        member("dir/", tarfile.DIRTYPE),
        member(".", tarfile.DIRTYPE),
        member("src/link", tarfile.SYMTYPE, linkname="../x", mode=0o777),
        member("src/hard", tarfile.LNKTYPE, linkname="a.txt"),
        member("x" * 100),
        member("x" * 101),
        member("d" * 99, tarfile.DIRTYPE),  # 100 with its slash
        member("d" * 100, tarfile.DIRTYPE),  # 101 with its slash: pax
        member("l", tarfile.SYMTYPE, linkname="t" * 100),
        member("l", tarfile.SYMTYPE, linkname="t" * 101),
        member("ünï", size=1),
        member("ok", tarfile.SYMTYPE, linkname="ünï"),
        member("bad\udcff"),  # not UTF-8 on disk
        member("u", uname="u" * 32, gname="g" * 32),
        member("u", uname="u" * 33),
        member("u", uname="ü"),
        member("id", uid=8**7 - 1, gid=8**7 - 1),
        member("id", uid=8**7),
        member("id", gid=-1),
        member("big", size=8**11 - 1),
        member("big", size=8**11),
        member("t", mtime=0),
        member("t", mtime=-5),
        member("t", mtime=8**11),
        member("t", mtime=1_700_000_000.5),
        member("t", mtime=1_700_000_000.0),
        member("m", mode=0o107777),
        member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3),
        member("blk", tarfile.BLKTYPE, devmajor=8, devminor=0),
        member("fifo", tarfile.FIFOTYPE),
        member("cont", tarfile.CONTTYPE, size=3),
        member("", tarfile.REGTYPE),
    ]
    with_pax = member("p")
    with_pax.pax_headers = {"comment": "hi"}
    out.append(with_pax)
    return out


@pytest.mark.parametrize("info", shapes(), ids=lambda i: f"{i.type!r}:{i.name[:12]}")
def test_encode_matches_tarfile_pax(info: tarfile.TarInfo) -> None:
    assert encode_header(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_encode_refuses_what_tarfile_refuses() -> None:
    info = member("none")
    info.mode = None  # type: ignore[assignment]
    with pytest.raises(ValueError):
        encode_header(info)


def assert_same(block: bytes) -> None:
    try:
        want = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except Exception as exc:
        with pytest.raises(type(exc)):
            decode_header(block)
        return
    got = decode_header(block)
    for field in FIELDS:
        assert getattr(got, field) == getattr(want, field), field
    if want.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        assert (got.devmajor, got.devminor) == (want.devmajor, want.devminor)


def header_blocks(data: bytes) -> list[bytes]:
    """Every header block of a tar archive (data and extension payloads skipped)."""
    blocks, pos = [], 0
    while pos + 512 <= len(data):
        block = data[pos : pos + 512]
        if block == bytes(512):
            break
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        blocks.append(block)
        pos += 512 + info.size + (-info.size % 512) if info.type != tarfile.GNUTYPE_SPARSE else 512
    return blocks


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_decode_matches_tarfile_on_its_own_output(fmt: int) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info in shapes():
            if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE) or info.pax_headers:
                continue
            info = member(info.name, info.type, linkname=info.linkname, mode=info.mode, size=0)
            if fmt == tarfile.USTAR_FORMAT and (
                len(info.name) > 100 or not info.name.isascii() or "\udcff" in info.name
            ):
                continue
            if fmt == tarfile.USTAR_FORMAT and len(info.linkname) > 100:
                continue
            tar.addfile(info)
        long = member("p" * 80 + "/" + "q" * 90)  # ustar prefix split
        if fmt != tarfile.PAX_FORMAT:
            tar.addfile(long)
        big = member("big", uid=8**8, gid=2**40)  # base-256 numbers in GNU format
        if fmt == tarfile.GNU_FORMAT:
            tar.addfile(big)
    blocks = header_blocks(buffer.getvalue())
    assert len(blocks) > 20
    for block in blocks:
        assert_same(block)


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "v7"])
def test_decode_matches_tarfile_on_gnu_tar_output(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "src"
    width = 30 if fmt == "v7" else 60  # v7 has no room for long names; the others split or extend them
    deep = root / ("d" * width) / ("e" * width)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"deep")
    (root / "plain").write_bytes(b"x" * 700)
    os.symlink("plain", root / "link")
    os.link(root / "plain", root / "hard")
    data = subprocess.run(
        ["tar", "-C", str(root), f"--format={fmt}", "-cf", "-", "."], capture_output=True, check=True
    ).stdout
    blocks = header_blocks(data)
    assert len(blocks) >= 6
    for block in blocks:
        assert_same(block)


def test_decode_matches_tarfile_on_damaged_headers() -> None:
    rng = random.Random(1234)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(member("dir/file.txt", uid=1000, gid=1000, uname="sandbox", gname="sandbox"))
    original = buffer.getvalue()[:512]
    tried = 0
    for _ in range(3000):
        block = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            block[rng.randrange(512)] = rng.choice([0, 0x20, 0x30, 0x37, 0x38, 0x80, 0xFF, rng.randrange(256)])
        if rng.random() < 0.7:  # mostly keep the checksum right, so the fields get parsed
            unsigned = 256 + sum(block[:148]) + sum(block[156:])
            signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
            block[148:156] = b"%06o\0 " % (unsigned if rng.random() < 0.8 else signed % (8**6))
        if bytes(block) == bytes(512):
            continue
        assert_same(bytes(block))
        tried += 1
    assert tried > 2900
