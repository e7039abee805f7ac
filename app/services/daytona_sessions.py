"""Daytona's process sessions on our background processes.

A session is a directory in the sandbox (``SESSION_ROOT/<session id>``); each
command run in it is one background process of ``ProcessService`` whose id
is the command's id, recorded under the session as ``cmd/<id>`` (the command
text). Like Daytona's sessions, the working directory and exported variables
carry from one command to the next: each command starts from the state the
previous one left (``cwd`` and ``env`` files, written as it exits). Output is
kept per stream; Daytona's combined ``output`` is stdout then stderr.

Everything lives in the sandbox, so any replica serves any session; a stopped
sandbox's commands read as ended (exit code unknown), as Daytona's do.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from app.errors import BadRequest, Conflict, NotFound, ProcessNotFound, ProviderError
from app.providers.base import OutputChunk, Provider
from app.schemas.daytona import bad_request
from app.schemas.processes import LogStream, ProcessView, StartProcessRequest
from app.services.processes import ProcessService
from app.storage.state.sandboxes import SandboxRecord

SESSION_ROOT = "/tmp/.sandbox-control/daytona-sessions"
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COMMAND_ID = re.compile(r"^[a-f0-9]{12}$")
_TIMEOUT = 30.0
_EXISTS = 3
_MISSING = 4
_CREATE = f'[ -e "$1" ] && exit {_EXISTS}; mkdir -p -- "$1/cmd"'
_REQUIRE = f'[ -d "$1/cmd" ] || exit {_MISSING}; '
_RECORD = _REQUIRE + 'cat > "$1/cmd/$2"'
#: ``id<TAB>base64(command)`` per command (base64: a command may hold tabs and newlines).
_COMMANDS = (
    _REQUIRE
    + 'for f in "$1"/cmd/*; do [ -f "$f" ] || continue; printf "%s\\t" "${f##*/}"; base64 -w0 < "$f"; echo; done'
)
_REMOVE = _REQUIRE + 'rm -rf -- "$1"'
#: Runs ``$2`` in the session's shell state: the cwd and exports the last command left, saved again at exit.
SESSION_SHELL = (
    'd=$1; [ -r "$d/cwd" ] && cd "$(cat "$d/cwd")" 2>/dev/null; [ -r "$d/env" ] && . "$d/env" 2>/dev/null; '
    'trap \'rc=$?; pwd > "$d/cwd.$$" && mv -f "$d/cwd.$$" "$d/cwd"; '
    'export -p > "$d/env.$$" && mv -f "$d/env.$$" "$d/env"; exit $rc\' EXIT; '
    'eval "$2"'
)


@dataclass(frozen=True)
class SessionCommand:
    """One command of a session: its id, text and exit code (None while it runs, or if lost)."""

    id: str
    command: str
    exit_code: int | None


@dataclass(frozen=True)
class CommandOutput:
    """A command's output so far; ``exit_code`` once it ended."""

    id: str
    stdout: str
    stderr: str
    exit_code: int | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class DaytonaSessions:
    """Create, run commands in, read and delete Daytona-style sessions."""

    def __init__(
        self, processes: ProcessService, provider: Provider, running: Callable[[str], Awaitable[SandboxRecord]]
    ) -> None:
        self._processes = processes
        self._provider = provider
        self._running = running

    @staticmethod
    def _dir(session_id: str) -> str:
        if not _SESSION_ID.match(session_id):
            raise BadRequest("session id: letters, digits and ._- only (at most 128)", field="sessionId")
        return f"{SESSION_ROOT}/{session_id}"

    async def _sh(self, any_id: str, script: str, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
        record = await self._running(any_id)
        assert record.provider_object_id is not None
        argv = ["sh", "-c", script, "sh", *args]
        result = await self._provider.exec(record.provider_object_id, argv, timeout=_TIMEOUT, stdin=stdin)
        return result.exit_code, (result.stdout or result.stderr).decode(errors="replace")

    async def _checked(self, any_id: str, session_id: str, script: str, *args: str, stdin: bytes | None = None) -> str:
        code, output = await self._sh(any_id, script, self._dir(session_id), *args, stdin=stdin)
        if code == _MISSING:
            raise NotFound(f"session {session_id!r} not found", session_id=session_id)
        if code != 0:
            raise ProviderError(f"session {session_id!r}: {output.strip()[-300:] or f'exit {code}'}")
        return output

    # -- sessions -----------------------------------------------------------------

    async def create(self, any_id: str, session_id: str) -> None:
        code, output = await self._sh(any_id, _CREATE, self._dir(session_id))
        if code == _EXISTS:
            raise Conflict(f"session {session_id!r} already exists", session_id=session_id)
        if code != 0:
            raise ProviderError(f"could not create session {session_id!r}: {output.strip()[-300:]}")

    async def commands(self, any_id: str, session_id: str) -> builtins.list[SessionCommand]:
        """The session's commands, oldest first, with their exit codes."""
        listing = await self._checked(any_id, session_id, _COMMANDS)
        texts = {}
        for line in listing.splitlines():
            command_id, _, encoded = line.partition("\t")
            texts[command_id] = base64.b64decode(encoded).decode(errors="replace")
        views = {v.pid: v for v in await self._processes.list(any_id) if v.pid in texts}
        ordered = sorted(views.values(), key=lambda v: v.started_at)
        return [SessionCommand(v.pid, texts[v.pid], v.exit_code) for v in ordered]

    async def list(self, any_id: str) -> builtins.list[tuple[str, builtins.list[SessionCommand]]]:
        """Every session of the sandbox with its commands."""
        code, output = await self._sh(any_id, 'cd "$1" 2>/dev/null && ls -1 || true', SESSION_ROOT)
        if code != 0:
            raise ProviderError(f"could not list sessions: {output.strip()[-300:]}")
        names = [name for name in output.splitlines() if _SESSION_ID.match(name)]
        return [(name, await self.commands(any_id, name)) for name in names]

    async def delete(self, any_id: str, session_id: str) -> None:
        """End the session's running commands and forget it (its logs go with it)."""
        for command in await self.commands(any_id, session_id):
            with contextlib.suppress(ProcessNotFound):
                await self._processes.delete(any_id, command.id)
        await self._checked(any_id, session_id, _REMOVE)

    # -- commands ---------------------------------------------------------------------

    async def execute(self, any_id: str, session_id: str, command: str, *, wait: bool) -> CommandOutput:
        """Run ``command`` in the session: in the background, or (``wait``) to its end with its output."""
        directory = self._dir(session_id)
        await self._checked(any_id, session_id, _REQUIRE + "true")
        try:
            request = StartProcessRequest(command=["sh", "-c", SESSION_SHELL, "sh", directory, command])
        except ValidationError as exc:
            raise bad_request(exc) from None
        started = await self._processes.start(any_id, request)
        await self._checked(any_id, session_id, _RECORD, started.pid, stdin=command.encode())
        if not wait:
            return CommandOutput(started.pid, "", "", None)
        streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        final: ProcessView | None = None
        async for item in await self._processes.follow(any_id, started.pid, {"stdout": 0, "stderr": 0}):
            if isinstance(item, OutputChunk):
                streams[item.stream].append(item.data)
            else:
                final = item
        return CommandOutput(
            started.pid,
            b"".join(streams["stdout"]).decode(errors="replace"),
            b"".join(streams["stderr"]).decode(errors="replace"),
            final.exit_code if final is not None else None,
        )

    async def command(self, any_id: str, session_id: str, command_id: str) -> SessionCommand:
        for command in await self.commands(any_id, session_id):
            if command.id == command_id:
                return command
        raise ProcessNotFound(f"command {command_id!r} not found in session {session_id!r}", pid=command_id)

    async def logs(self, any_id: str, session_id: str, command_id: str) -> CommandOutput:
        """A command's output so far (both streams, from the start)."""
        if not _COMMAND_ID.match(command_id):
            raise ProcessNotFound(f"command {command_id!r} not found in session {session_id!r}", pid=command_id)
        found = await self.command(any_id, session_id, command_id)
        stdout, stderr = await asyncio.gather(
            self._read(any_id, command_id, "stdout"), self._read(any_id, command_id, "stderr")
        )
        return CommandOutput(command_id, stdout, stderr, found.exit_code)

    async def follow(self, any_id: str, session_id: str, command_id: str) -> AsyncGenerator[OutputChunk, None]:
        """The command's output from the start, then as it comes, until it ended."""
        await self.command(any_id, session_id, command_id)
        items = await self._processes.follow(any_id, command_id, {"stdout": 0, "stderr": 0})

        async def chunks() -> AsyncGenerator[OutputChunk, None]:
            async for item in items:
                if isinstance(item, OutputChunk):
                    yield item

        return chunks()

    async def send_input(self, any_id: str, session_id: str, command_id: str, data: bytes) -> None:
        """Append ``data`` to the running command's stdin (Daytona's session input never closes it)."""
        await self.command(any_id, session_id, command_id)
        await self._processes.write_stdin(any_id, command_id, data, close=False)

    async def _read(self, any_id: str, pid: str, stream: LogStream) -> str:
        chunks = [chunk async for chunk in await self._processes.read_log(any_id, pid, stream, 0)]
        return b"".join(chunks).decode(errors="replace")
