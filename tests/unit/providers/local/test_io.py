"""Async subprocess plumbing, on plain host processes (no sandbox)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.providers.local.io import (
    ERRNO_EXIT_BASE,
    exit_status,
    feed_input,
    os_error,
    run_process,
    stream_output,
)

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def strict(status: int, stderr: bytes) -> None:
    if status != 0:
        raise os_error(status, stderr, "/p")


async def test_run_process_captures_streams_and_status() -> None:
    result = await run_process(["sh", "-c", "cat; echo err >&2; exit 7"], env=ENV, timeout=10, stdin=b"in")
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (7, b"in", b"err\n", False)


async def test_run_process_caps_each_stream_but_drains_it() -> None:
    # 2 MB through a 1 kB cap: the child must not block on a full pipe.
    result = await run_process(
        ["sh", "-c", "head -c 2000000 /dev/zero; echo done >&2"], env=ENV, timeout=10, max_output_bytes=1000
    )
    assert (len(result.stdout), result.stderr, result.truncated, result.exit_code) == (1000, b"done\n", True, 0)


async def test_run_process_timeout_kills_the_group(tmp_path: Path) -> None:
    marker = tmp_path / "ticks"
    script = f"(while :; do echo x >> {marker}; sleep 0.05; done) & sleep 100"
    result = await run_process(["sh", "-c", script], env=ENV, timeout=0.5)
    assert (result.timed_out, result.exit_code) == (True, 124)
    size = marker.stat().st_size
    await asyncio.sleep(0.4)
    assert marker.stat().st_size == size


async def test_signal_death_is_128_plus_signal() -> None:
    assert (await run_process(["sh", "-c", "kill -KILL $$"], env=ENV, timeout=10)).exit_code == 137
    assert exit_status(-15) == 143 and exit_status(3) == 3


async def test_track_sees_the_running_pid() -> None:
    seen: set[int] = set()
    task = asyncio.ensure_future(run_process(["sleep", "5"], env=ENV, timeout=10, track=seen))
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert len(seen) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == set()


async def test_stream_output_checks_the_outcome_after_the_bytes() -> None:
    stream = stream_output(["sh", "-c", "printf abc; exit 102"], env=ENV, check=strict)
    chunks = []
    with pytest.raises(FileNotFoundError):
        async for chunk in stream:
            chunks.append(chunk)
    assert b"".join(chunks) == b"abc"


async def test_stream_output_closed_early_kills_the_child(tmp_path: Path) -> None:
    seen: set[int] = set()
    stream = stream_output(["cat", "/dev/zero"], env=ENV, check=strict, track=seen)
    assert await anext(stream)
    (pid,) = seen
    await stream.aclose()
    assert seen == set()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


async def test_feed_input_streams_and_reports_failure(tmp_path: Path) -> None:
    async def data() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 65536

    target = tmp_path / "out"
    await feed_input(["sh", "-c", f"cat > {target}"], data(), env=ENV, check=strict)
    assert target.stat().st_size == 100 * 65536
    # A child that refuses its input at once: its status, not BrokenPipeError, decides.
    with pytest.raises(PermissionError):
        await feed_input(["sh", "-c", "echo 'x: Permission denied' >&2; exit 1"], data(), env=ENV, check=strict)


async def test_feed_input_source_error_kills_the_child() -> None:
    seen: set[int] = set()

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("upload broke")

    with pytest.raises(RuntimeError, match="upload broke"):
        await feed_input(["cat"], broken(), env=ENV, check=strict, track=seen)
    assert seen == set()


@pytest.mark.parametrize(
    ("status", "stderr", "expected"),
    [
        (ERRNO_EXIT_BASE + errno.ENOENT, b"", FileNotFoundError),
        (ERRNO_EXIT_BASE + errno.EISDIR, b"", IsADirectoryError),
        (1, b"sh: cannot create /x: Permission denied", PermissionError),
        (1, b"mkdir: cannot create directory: Not a directory", NotADirectoryError),
    ],
)
def test_os_error_mapping(status: int, stderr: bytes, expected: type[OSError]) -> None:
    error = os_error(status, stderr, "/x")
    assert type(error) is expected and error.filename == "/x"


def test_os_error_fallbacks() -> None:
    assert os_error(1, b"Read-only file system", "/x").errno == errno.EROFS
    assert os_error(1, b"something odd", "/x").errno == errno.EIO
