"""Commands in a pod through ``pods/exec``, with a deadline the service enforces.

The exec subresource has no timeout and no "kill this exec", and a
websocket that closes leaves the command running. So, as on docker and
modal, every command runs under ``exec_wrapper``: a process-group leader
whose group id is recorded in the pod's ``/tmp``; at the deadline a second
exec kills that group and every process still carrying the exec's marker
variable, and the result is exit 124 with ``timed_out``.

The exec API takes no environment either, and the command line travels in
the request URL, which API servers write to their audit logs. So per-exec
variables go through stdin instead: a small loader reads ``NAME LENGTH``
lines, each followed by the value's bytes, up to an empty line, exports
them and ``exec``s the command, which gets the rest of stdin.

The channel protocol (``channel``) is negotiated per connection, v5
preferred. v4 needs stdin framed in the command line, which is sent before
the server says which protocol it speaks; so the first exec that has stdin,
when nothing was negotiated yet, is preceded by one probe (``true``), and
the protocol learned is used from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

from app.errors import BadRequest, ProviderUnavailable
from app.providers.base import ExecEvent, ExecResult
from app.providers.exec_wrapper import EXEC_MARKER, killer_argv, wrapped_argv
from app.providers.kubernetes.channel import (
    ERROR,
    PROTOCOLS,
    STDERR,
    STDOUT,
    ChannelProtocolError,
    close_stdin,
    decode,
    exec_query,
    exit_code,
    parse_status,
    stdin_message,
    wrap_stdin,
)
from app.providers.streaming import OutputPump, collect, once

log = logging.getLogger(__name__)

#: Seconds the kill exec itself may take.
KILL_TIMEOUT_SECONDS = 15.0
#: Largest stdin message sent at once.
STDIN_MESSAGE_BYTES = 256 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Exports the variables of ``env_block`` from stdin, then runs ``"$@"`` with the rest of stdin.
#: ``read`` takes a pipe one byte at a time and ``head -c`` exactly the value (the ``x``
#: keeps the command substitution from eating trailing newlines).
ENV_LOADER = (
    "while IFS=' ' read -r name len && [ -n \"$name\" ]; do "
    'value=$(head -c "$len"; echo x) || exit 125; export "$name=${value%x}"; done; exec "$@"'
)

#: Opens an upgraded exec connection: (pod name, query, protocols offered).
Connect = Callable[[str, list[tuple[str, str]], Sequence[str]], AbstractAsyncContextManager[ClientConnection]]


class ExecInterrupted(ProviderUnavailable):
    """The exec stream ended without the command's exit status (pod gone, connection lost)."""


class ExecChannel:
    """One running command: stdin in, stdout/stderr out, then its ``Status``."""

    def __init__(self, connection: ClientConnection, protocol: str) -> None:
        self.protocol = protocol
        self._ws = connection
        self._status = bytearray()

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin (waits while the connection is congested)."""
        view = memoryview(data)
        for start in range(0, len(view), STDIN_MESSAGE_BYTES):
            await self._ws.send(stdin_message(self.protocol, bytes(view[start : start + STDIN_MESSAGE_BYTES])))

    async def close_stdin(self) -> None:
        """End the command's input."""
        await self._ws.send(close_stdin(self.protocol))

    async def receive(self) -> tuple[int, bytes] | None:
        """The next stdout/stderr payload, or ``None`` once the server ended the stream."""
        while True:
            try:
                message = await self._ws.recv()
            except ConnectionClosedOK:
                return None
            except ConnectionClosedError as exc:
                raise ExecInterrupted(f"the exec stream broke: {exc}") from exc
            channel, payload = decode(message)
            if channel in (STDOUT, STDERR):
                if payload:
                    return channel, payload
            elif channel == ERROR:
                self._status += payload

    def exit_code(self) -> int:
        """The exit code from the final ``Status`` (after ``receive`` returned ``None``)."""
        if not self._status:
            raise ExecInterrupted("the exec stream ended without the command's exit status")
        return exit_code(parse_status(bytes(self._status)))

    async def drain(self) -> int:
        """Discard the output, wait for the end; the exit code."""
        while await self.receive() is not None:
            pass
        return self.exit_code()


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Per-exec variables a shell can export (names, no NUL bytes, not our marker)."""
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name) or "\0" in value or name == EXEC_MARKER:
            raise BadRequest(f"invalid environment variable: {name!r}", field="env")
    return dict(env or {})


def exec_argv(argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None, token: str) -> list[str]:
    """The command line that runs ``argv`` in ``cwd`` under the group wrapper (``env`` read from stdin)."""
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise BadRequest("argv must be a non-empty list of strings without NUL bytes", field="command")
    if not cwd.startswith("/") or "\0" in cwd:
        raise BadRequest(f"cwd must be an absolute path: {cwd!r}", field="cwd")
    command = ["env", f"{EXEC_MARKER}={token}", *wrapped_argv(cwd, argv)]
    return ["sh", "-c", ENV_LOADER, "sh", *command] if check_env(env) else command


def env_block(env: Mapping[str, str]) -> bytes:
    """What ``ENV_LOADER`` reads: ``NAME LENGTH\n`` then the value's bytes, per variable; an empty line ends it."""
    parts = []
    for name, value in env.items():
        data = value.encode()
        parts.append(f"{name} {len(data)}\n".encode() + data)
    return b"".join(parts) + b"\n"


class PodExecutor:
    """Runs commands in pods through ``connect``, remembering the negotiated protocol."""

    def __init__(self, connect: Connect, container: str) -> None:
        self._connect = connect
        self._container = container
        #: The channel protocol the API server chose, once known.
        self.protocol: str | None = None

    @asynccontextmanager
    async def open(self, pod: str, argv: Sequence[str], *, stdin: bool) -> AsyncIterator[ExecChannel]:
        """A running command; its stdin is open only when ``stdin`` is true."""
        if stdin and self.protocol is None:
            async with self.open(pod, ["true"], stdin=False) as probe:
                await probe.drain()
        offered = PROTOCOLS if self.protocol is None else (self.protocol,)
        command = wrap_stdin(self.protocol, argv) if stdin and self.protocol else list(argv)
        query = exec_query(command, container=self._container, stdin=stdin)
        async with self._connect(pod, query, offered) as connection:
            negotiated = connection.subprotocol
            if negotiated not in offered:
                raise ChannelProtocolError(
                    f"the API server offers exec protocol {negotiated!r}; this service needs one of {list(offered)}"
                )
            self.protocol = negotiated
            yield ExecChannel(connection, negotiated)

    async def run(
        self,
        pod: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        max_output_bytes: int,
    ) -> ExecResult:
        """Run ``argv``; see ``Provider.exec`` for the contract."""
        events = self.stream(
            pod,
            argv,
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=once(stdin) if stdin is not None else None,
            max_output_bytes=max_output_bytes,
        )
        return await collect(events)

    async def stream(
        self,
        pod: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str,
        env: Mapping[str, str] | None,
        stdin: AsyncIterator[bytes] | None,
        max_output_bytes: int,
    ) -> AsyncGenerator[ExecEvent, None]:
        """Run ``argv`` yielding its channels' payloads as they come; see ``Provider.exec_stream``."""
        if timeout <= 0:
            raise BadRequest("timeout must be positive", field="timeout")
        token = secrets.token_hex(8)
        command = exec_argv(argv, cwd=cwd, env=env, token=token)
        prelude = env_block(env) if env else b""
        pump = OutputPump(max_output_bytes)
        wants_stdin = stdin is not None or bool(prelude)
        async with self.open(pod, command, stdin=wants_stdin) as channel:

            async def read() -> None:
                while (item := await channel.receive()) is not None:
                    await pump.put("stdout" if item[0] == STDOUT else "stderr", item[1])

            async def feed() -> None:
                await channel.send(prelude)
                if stdin is not None:
                    async for chunk in stdin:
                        await channel.send(chunk)
                await channel.close_stdin()

            async def kill() -> None:
                await self.kill(pod, token)

            feeder = asyncio.create_task(feed()) if wants_stdin else None
            finished = False
            try:
                async for chunk in pump.chunks(read(), timeout=timeout, kill=kill):
                    yield chunk
                finished = True
            finally:
                if feeder is not None:
                    feeder.cancel()
                    await asyncio.gather(feeder, return_exceptions=True)
                if not finished:
                    # Nobody reads on (disconnect, cancellation): do not leave the command running.
                    await asyncio.shield(self._kill_quietly(pod, token))
            code = 0 if pump.timed_out else channel.exit_code()
        yield pump.result(code)

    async def kill(self, pod: str, token: str) -> None:
        """Kill the process group of exec ``token`` (and its marked strays) with a second exec."""
        try:
            async with asyncio.timeout(KILL_TIMEOUT_SECONDS), self.open(pod, killer_argv(token), stdin=False) as ch:
                await ch.drain()
        except TimeoutError:
            log.warning("kubernetes: killing exec %s in %s took over %.0f s", token, pod, KILL_TIMEOUT_SECONDS)

    async def _kill_quietly(self, pod: str, token: str) -> None:
        # Best effort on cancellation: the pod may be gone already.
        with contextlib.suppress(Exception):
            await self.kill(pod, token)
