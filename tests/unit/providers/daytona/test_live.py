"""The base64-line wrapper of streamed exec on Daytona (``app.providers.daytona.live``), run by a real ``sh``."""

from __future__ import annotations

import asyncio
import base64
import shlex
import subprocess

from app.providers.base import OutputChunk
from app.providers.daytona.live import END_OF_INPUT, _Lines, live_script


def test_lines_decode_across_arbitrary_text_boundaries_and_stop_at_the_cap() -> None:
    out: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
    lines = _Lines("stdout", 5, out)
    text = base64.b64encode(b"abc\xff").decode() + "\n" + base64.b64encode(b"\x00zz").decode() + "\n"
    for char in text:
        lines.feed(char)
    chunks = [out.get_nowait() for _ in range(out.qsize())]
    assert [c.data for c in chunks if c] == [b"abc\xff", b"\x00"] and lines.truncated


def decode(lines: bytes) -> bytes:
    return b"".join(base64.b64decode(line) for line in lines.split(b"\n") if line)


def test_the_wrapper_round_trips_binary_stdin_and_output_and_keeps_the_exit_code() -> None:
    script = live_script(
        ["sh", "-c", 'cat; printf "e\\377$A" >&2; exit 9'],
        token="t" * 16,
        timeout=20,
        cwd="/",
        env={"A": "1"},
        has_stdin=True,
    )
    payload = bytes(range(256)) * 300
    feed = "".join(base64.b64encode(payload[i : i + 1000]).decode() + "\n" for i in range(0, len(payload), 1000))
    done = subprocess.run(
        shlex.split(script), input=(feed + END_OF_INPUT + "\n").encode(), capture_output=True, timeout=60
    )
    assert done.returncode == 9, done.stderr[-500:]
    assert decode(done.stdout) == payload
    assert decode(done.stderr) == b"e\xff1"


def test_a_command_that_does_not_read_its_input_still_ends() -> None:
    script = live_script(["true"], token="u" * 16, timeout=20, cwd="/", env={}, has_stdin=True)
    # stdin stays open (no end-of-input line): the wrapper must not wait for it.
    with subprocess.Popen(shlex.split(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.wait(timeout=30) == 0
        assert proc.stdin is not None
        proc.stdin.close()


def test_a_missing_working_directory_fails_like_cd() -> None:
    script = live_script(["true"], token="v" * 16, timeout=20, cwd="/nonexistent", env={}, has_stdin=False)
    done = subprocess.run(shlex.split(script), capture_output=True, timeout=30)
    assert done.returncode == 1 and b"/nonexistent" in decode(done.stderr) and done.stdout == b""


def test_a_line_that_is_not_base64_is_passed_on_as_text() -> None:
    out: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
    _Lines("stderr", 100, out).feed("mkfifo: No space left on device\n")
    chunk = out.get_nowait()
    assert chunk is not None and chunk.data == b"mkfifo: No space left on device\n"
