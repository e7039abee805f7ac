"""What an interactive terminal is to the service (``Provider.open_pty``), whoever makes it."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from app.errors import BadRequest


def check_size(cols: int, rows: int) -> None:
    """Refuse a window size no terminal has."""
    if not (1 <= cols <= 1000 and 1 <= rows <= 1000):
        raise BadRequest("cols and rows must be within 1..1000", field="cols")


class PtySession(abc.ABC):
    """One running terminal: bytes in and out, resizes, then the shell's exit status."""

    @abc.abstractmethod
    def output(self) -> AsyncIterator[bytes]:
        """The terminal's output until the shell ends (iterate once)."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""

    @abc.abstractmethod
    async def resize(self, cols: int, rows: int) -> None:
        """Change the window size (the shell gets SIGWINCH)."""

    @abc.abstractmethod
    async def exit_code(self) -> int:
        """The shell's exit status, once ``output`` ended."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """End the terminal (kills the shell if it still runs)."""
