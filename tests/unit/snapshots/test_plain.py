"""Plain members: the header a snapshot writes without ``TarInfo`` is byte for byte the general path's."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from app.snapshots import tarstream
from app.snapshots.plain import decode_plain, encode_plain
from app.snapshots.safe_tar import UnsafeEntry, clamp_mode, normalize_name
from app.snapshots.scrub import SecretScanner
from app.snapshots.tarstream import REGULAR_TYPES, clean_member
from app.snapshots.ustar import decode_header, encode_header
from app.snapshots.writer import ArchiveBuilder
from tests.support_tree import build_sample_tree, collect, tar_stream
from tests.unit.snapshots.test_ustar import header_blocks, member, shapes


def check_block(block: bytes) -> bool:
    """Compare ``decode_plain``/``encode_plain`` with the general path on one header; True if plain."""
    plain = decode_plain(block)
    if plain is None:
        return False
    info = decode_header(block)  # never raises for a block decode_plain accepted
    assert info.type in REGULAR_TYPES or info.type == tarfile.DIRTYPE
    assert not info.linkname
    assert plain.name == info.name
    assert plain.regular == (info.type != tarfile.DIRTYPE)
    assert plain.mode == info.mode
    assert plain.size == (info.size if plain.regular else 0)
    for name in ("workspace/a", "w/" + "n" * 97, "w/" + "n" * 98, "w/ünï"):
        mode = clamp_mode(info.mode, directory=not plain.regular)
        want = encode_header(clean_member(info, name, mode=mode))
        got = encode_plain(plain, name, mode)
        assert got is None if len(want) > 512 else got == want, (name, info.type)
    return True


def test_plain_headers_of_tarfile_are_encoded_as_the_general_path() -> None:
    found = 0
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            for info in shapes():
                if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE) or info.pax_headers:
                    continue
                info = member(info.name, info.type, linkname=info.linkname, mode=info.mode, uname=info.uname)
                with_data = info.type in REGULAR_TYPES
                info.size = 3 if with_data else 0
                if fmt == tarfile.USTAR_FORMAT and (len(info.name) > 99 or not info.name.isascii()):
                    continue
                if fmt == tarfile.USTAR_FORMAT and (len(info.linkname) > 100 or not info.uname.isascii()):
                    continue
                tar.addfile(info, io.BytesIO(b"abc") if with_data else None)
        found += sum(check_block(block) for block in header_blocks(buffer.getvalue()))
    assert found > 20


@pytest.mark.parametrize("owners", [["--numeric-owner"], []])
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_plain_headers_of_gnu_tar_are_encoded_as_the_general_path(tmp_path: Path, fmt: str, owners: list[str]) -> None:
    root = build_sample_tree(tmp_path / "src")
    (root / "setuid").write_bytes(b"s")
    os.chmod(root / "setuid", 0o4755)
    data = subprocess.run(
        ["tar", "-C", str(root), f"--format={fmt}", *owners, "-cf", "-", "."], capture_output=True, check=True
    ).stdout
    assert sum(check_block(block) for block in header_blocks(data)) >= 10


def test_blocks_that_are_not_plain_take_the_general_path() -> None:
    info = member("./a.txt", size=3)
    block = info.tobuf(tarfile.GNU_FORMAT)
    assert decode_plain(block) is not None
    damaged = block[:148] + b"000000\0 " + block[156:]  # wrong checksum: tarfile must refuse it
    assert decode_plain(damaged) is None
    assert decode_plain(member("./l", tarfile.SYMTYPE, linkname="a.txt").tobuf(tarfile.GNU_FORMAT)) is None
    assert decode_plain(member("./dev", tarfile.CHRTYPE).tobuf(tarfile.GNU_FORMAT)) is None
    assert decode_plain(member("./big", uid=8**8).tobuf(tarfile.GNU_FORMAT)) is None  # base-256
    assert decode_plain(member("./old/", tarfile.AREGTYPE).tobuf(tarfile.GNU_FORMAT)) is None  # a V7 directory
    garbage = block[:265] + b"root\0junk".ljust(32, b"\0") + block[297:]  # bytes after a NUL
    assert decode_plain(garbage) is None


def test_normalize_name_strips_the_leading_dot_slash_of_gnu_tar() -> None:
    assert normalize_name("./src/a.py") == "src/a.py"
    assert normalize_name("./") == "."
    assert normalize_name(".") == "."
    assert normalize_name("./a/./b") == "a/b"
    assert normalize_name("././a") == "a"


async def build(root: Path, *, secrets: tuple[str, ...] = (), tool: str = "gnu") -> tuple[bytes, int]:
    builder = ArchiveBuilder(["/workspace"], lambda _: tar_stream(root, tool=tool), SecretScanner(secrets), False)
    return await collect(builder.stream()), builder.file_count


async def test_the_archive_is_the_same_with_and_without_plain_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = build_sample_tree(tmp_path / "src")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text('[remote "origin"]\n\turl = https://user:tok@example.com/r.git\n')
    (root / ".git-credentials").write_text("https://user:tok@example.com\n")
    fast = await build(root)
    monkeypatch.setattr(tarstream, "decode_plain", lambda block: None)
    assert await build(root) == fast


async def test_secrets_are_found_in_plain_members(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("the token is s3cr3t-t0ken-value\n")
    with pytest.raises(UnsafeEntry, match=r"notes\.txt"):
        await build(tmp_path / "src", secrets=("s3cr3t-t0ken-value",), tool="python")
