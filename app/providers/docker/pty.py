"""Docker's native terminal: an exec with ``Tty``, resized through the Engine's exec resize."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence

from aiodocker.stream import Stream

from app.providers.docker.engine import EngineClient, mapped_errors
from app.providers.docker.exec import exec_env, kill_quietly, recorded_exit_code
from app.providers.exec_wrapper import wrapped_argv
from app.providers.terminal import PtySession, check_size


class DockerPty(PtySession):
    """``argv`` on a tty exec of ``container``; its group is killed when the session closes early."""

    def __init__(
        self,
        engine: EngineClient,
        container: str,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        timeout: float,
        cwd: str | None,
        env: Mapping[str, str] | None,
    ) -> None:
        check_size(cols, rows)
        self._engine, self._container, self._argv = engine, container, list(argv)
        self._size, self._timeout, self._cwd = (cols, rows), timeout, cwd
        self._token = secrets.token_hex(8)
        self._env = exec_env(env, self._token)
        self._exec_id: str | None = None
        self._stream: Stream | None = None
        #: Keystrokes typed before the exec started (the output's first read starts it).
        self._early = bytearray()
        self._code: int | None = None

    async def output(self) -> AsyncGenerator[bytes, None]:
        created = await self._engine.call(
            "POST",
            f"containers/{self._container}/exec",
            body={
                "AttachStdin": True,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": True,
                "Cmd": wrapped_argv(self._cwd, self._argv),
                "Env": self._env,
            },
            ref=self._container,
        )
        self._exec_id = created["Id"]
        self._stream = await self._engine.exec_stream(self._exec_id, self._container, tty=True)
        await self.resize(*self._size)
        if self._early:
            await self._stream.write_in(bytes(self._early))
            self._early.clear()
        finished = False
        try:
            async with asyncio.timeout(self._timeout):
                with mapped_errors(self._container, what="terminal output"):
                    while (message := await self._stream.read_out()) is not None:
                        yield message.data
            finished = True
        finally:
            if not finished:
                await asyncio.shield(kill_quietly(self._engine, self._container, self._token, ""))
        self._code = await recorded_exit_code(self._engine, self._exec_id, self._container)

    async def write(self, data: bytes) -> None:
        if self._stream is None:
            self._early += data
        else:
            await self._stream.write_in(data)

    async def resize(self, cols: int, rows: int) -> None:
        check_size(cols, rows)
        self._size = (cols, rows)
        if self._exec_id is not None:
            params = {"h": str(rows), "w": str(cols)}
            await self._engine.call("POST", f"exec/{self._exec_id}/resize", params=params, ref=self._container)

    async def exit_code(self) -> int:
        if self._code is None:
            raise RuntimeError("the terminal has not ended")
        return self._code

    async def aclose(self) -> None:
        if self._stream is not None:
            if self._code is None:
                await kill_quietly(self._engine, self._container, self._token, "")
            await self._stream.close()
