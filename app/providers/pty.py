"""Interactive terminals (``Provider.open_pty``) over any provider's ``exec_stream``.

A small Python helper runs inside the sandbox: it forks the shell on a new
pseudo-terminal, copies the terminal's output to its stdout, and reads its
stdin as frames, so keystrokes and window-size changes share the one input
an exec has:

    b"d" + 4-byte length + bytes     keystrokes for the terminal
    b"r" + 2-byte cols + 2-byte rows a resize (TIOCSWINSZ; the shell gets SIGWINCH)

Its exit status is the shell's. Needs ``python3`` in the sandbox (the sandbox
image and local sandboxes have it); providers take it through ``HelperPtyMixin``;
those with a native terminal (docker's tty exec) implement ``open_pty`` themselves.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence

from app.providers.base import ExecResult, OutputChunk, Provider
from app.providers.terminal import PtySession, check_size

HELPER = r"""
import fcntl, os, pty, select, struct, sys, termios
cols, rows, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
def size(c, r):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, 0, 0))
size(cols, rows)
buf, inp = b"", True
while True:
    ready, _, _ = select.select([fd] + ([0] if inp else []), [], [])
    if fd in ready:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            break
        os.write(1, data)
    if 0 in ready:
        chunk = os.read(0, 65536)
        if not chunk:
            inp = False
            os.kill(pid, 1)
            continue
        buf += chunk
        while buf:
            if buf[:1] == b"d" and len(buf) >= 5:
                n = struct.unpack(">I", buf[1:5])[0]
                if len(buf) < 5 + n:
                    break
                os.write(fd, buf[5:5 + n]); buf = buf[5 + n:]
            elif buf[:1] == b"r" and len(buf) >= 5:
                c, r = struct.unpack(">HH", buf[1:5]); buf = buf[5:]; size(c, r)
            elif buf[:1] in (b"d", b"r"):
                break
            else:
                sys.exit(125)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""

#: Largest keystroke frame (bigger writes are split).
_FRAME_BYTES = 64 * 1024


class HelperPty(PtySession):
    """A terminal made by ``HELPER`` inside the sandbox, over ``exec_stream``."""

    def __init__(
        self,
        provider: Provider,
        ref: str,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        timeout: float,
        cwd: str | None,
        env: Mapping[str, str] | None,
    ) -> None:
        check_size(cols, rows)
        self._input: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self._events = provider.exec_stream(
            ref,
            ["python3", "-c", HELPER, str(cols), str(rows), *argv],
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=self._frames(),
        )
        self._result: ExecResult | None = None

    async def _frames(self) -> AsyncIterator[bytes]:
        while (frame := await self._input.get()) is not None:
            yield frame

    async def output(self) -> AsyncGenerator[bytes, None]:
        async for event in self._events:
            if isinstance(event, OutputChunk):
                if event.stream == "stdout":
                    yield event.data
            else:
                self._result = event

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), _FRAME_BYTES):
            part = data[start : start + _FRAME_BYTES]
            await self._input.put(b"d" + struct.pack(">I", len(part)) + part)

    async def resize(self, cols: int, rows: int) -> None:
        check_size(cols, rows)
        await self._input.put(b"r" + struct.pack(">HH", cols, rows))

    async def exit_code(self) -> int:
        if self._result is None:
            raise RuntimeError("the terminal has not ended")
        return self._result.exit_code

    async def aclose(self) -> None:
        await self._events.aclose()


class HelperPtyMixin:
    """``open_pty`` through ``HelperPty``, for a provider without a native terminal (mix in before ``Provider``)."""

    def open_pty(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PtySession:
        assert isinstance(self, Provider)
        return HelperPty(self, ref, argv, cols=cols, rows=rows, timeout=timeout, cwd=cwd, env=env)
