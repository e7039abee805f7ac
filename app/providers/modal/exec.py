"""Commands in a Modal sandbox with a deadline the service enforces.

``Sandbox.exec`` has a whole-second ``timeout`` and its ``ContainerProcess``
has no kill. So each command runs under a small ``sh`` wrapper that makes it
a session (process group) leader with ``setsid`` and records the group id in
a file; at the client-side deadline a second exec kills that group and every
process still carrying this exec's marker variable. Modal's own exec
``timeout`` (rounded up) stays as the backstop that ends the exec even if
the kill exec cannot run.

Output is read incrementally from both streams at once and capped per
stream; bytes past the cap are read and dropped so the command never stalls.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from app.errors import BadRequest, SandboxControlError
from app.providers.base import TIMEOUT_EXIT_CODE, ExecEvent, StreamName, check_argv
from app.providers.exec_wrapper import EXEC_MARKER, CappedBuffer, killer_argv, wrapped_argv
from app.providers.modal.errors import SdkCaller
from app.providers.modal.spec import WORKSPACE, check_env, exec_timeout_seconds
from app.providers.streaming import OutputPump

log = logging.getLogger(__name__)

#: Seconds to wait for a killed command's exec to report its end.
KILL_DRAIN_SECONDS = 5.0
#: Seconds the kill exec itself may take.
KILL_TIMEOUT_SECONDS = 15
#: Largest chunk handed to a caller; the SDK's chunks are usually far smaller.
MAX_CHUNK = 1 << 20
STDIN_CHUNK = 256 * 1024


class StreamBuffer(CappedBuffer):
    """A ``CappedBuffer`` fed from an SDK output stream."""

    async def drain(self, stream: Any) -> None:
        async for chunk in stream:
            self.add(as_bytes(chunk))


def as_bytes(chunk: bytes | str) -> bytes:
    """The SDK yields bytes with ``text=False``; tolerate text all the same."""
    return chunk.encode() if isinstance(chunk, str) else bytes(chunk)


async def feed_stdin(process: Any, data: bytes | AsyncIterator[bytes] | None) -> None:
    """Write ``data`` to the process's stdin in drained chunks, then EOF (always: ``cat`` must end)."""
    writer = process.stdin
    if isinstance(data, bytes | bytearray):
        view = memoryview(data)
        for start in range(0, len(view), STDIN_CHUNK):
            writer.write(bytes(view[start : start + STDIN_CHUNK]))
            await writer.drain.aio()
    elif data is not None:
        async for chunk in data:
            if chunk:
                writer.write(chunk)
                # Drain per chunk: memory stays one chunk deep, whatever the stream's size.
                await writer.drain.aio()
    writer.write_eof()
    await writer.drain.aio()


def check_exec_args(argv: Sequence[str], cwd: str | None, timeout: float) -> str:
    """Validate an exec request; returns the working directory."""
    check_argv(argv)
    cwd = cwd or WORKSPACE
    if not cwd.startswith("/") or "\0" in cwd:
        raise BadRequest(f"cwd must be an absolute path: {cwd!r}", field="cwd")
    if timeout <= 0:
        raise BadRequest("timeout must be positive", field="timeout")
    return cwd


async def stream_exec(
    caller: SdkCaller,
    sandbox: Any,
    ref: str,
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: AsyncIterator[bytes] | None,
    max_output_bytes: int,
) -> AsyncGenerator[ExecEvent, None]:
    """Run ``argv`` in ``sandbox`` yielding the process's streams as the SDK hands them over."""
    workdir = check_exec_args(argv, cwd, timeout)
    token = secrets.token_hex(8)
    exec_env = {**check_env(env, reserved=(EXEC_MARKER,)), EXEC_MARKER: token}
    # Not retried: a command that may have started must not run twice.
    process = await caller.call(
        "exec",
        lambda: sandbox.exec.aio(
            *wrapped_argv(workdir, argv),
            env=exec_env, timeout=exec_timeout_seconds(timeout), text=False,
        ),
        ref=ref,
        retry=False,
    )  # fmt: skip
    pump = OutputPump(max_output_bytes)
    feeder = asyncio.ensure_future(feed_stdin(process, stdin))

    async def drain(name: StreamName, stream: Any) -> None:
        async for chunk in stream:
            await pump.put(name, as_bytes(chunk))

    async def read() -> None:
        try:
            await asyncio.gather(drain("stdout", process.stdout), drain("stderr", process.stderr))
        except SandboxControlError:
            raise
        except Exception as exc:
            caller.fail(exc, "exec", ref=ref)

    async def kill() -> None:
        await _kill(caller, sandbox, ref, token)

    finished = False
    try:
        async for chunk in pump.chunks(read(), timeout=timeout, kill=kill):
            yield chunk
        finished = True
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        if not finished:
            # Nobody reads on (disconnect, cancellation): do not leave the command running.
            await asyncio.shield(kill())
    code = TIMEOUT_EXIT_CODE
    try:
        async with asyncio.timeout(KILL_DRAIN_SECONDS if pump.timed_out else timeout):
            code = await process.wait.aio()
    except SandboxControlError:
        raise
    except TimeoutError:
        pass  # killed at the deadline and the exec has not reported its end: 124 all the same
    except Exception as exc:
        if not pump.timed_out:
            caller.fail(exc, "exec", ref=ref)
    if code == -1:
        # The SDK reports -1 when Modal's own exec timeout ended the command.
        pump.timed_out = True
    yield pump.result(code)


async def _kill(caller: SdkCaller, sandbox: Any, ref: str, token: str) -> None:
    """Kill the process group of exec ``token``; failures are logged, never raised."""
    try:
        async with asyncio.timeout(KILL_TIMEOUT_SECONDS + 5):
            killer = await caller.call(
                "exec (kill)",
                lambda: sandbox.exec.aio(*killer_argv(token), timeout=KILL_TIMEOUT_SECONDS, text=False),
                ref=ref,
                retry=False,
            )
            await feed_stdin(killer, None)
            await killer.wait.aio()
    except Exception as exc:
        log.warning("modal provider: could not kill exec %s in %s: %s", token, ref, exc)
