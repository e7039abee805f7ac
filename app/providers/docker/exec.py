"""``exec`` in a container with a deadline the service enforces.

The Engine has no exec timeout and no "kill this exec". So every command runs
under a small ``sh`` wrapper that makes it a process-group (session) leader
with ``setsid`` and writes that group id to a file; at the deadline a second
exec (as the same user) kills the whole group, and every process that still
carries this exec's marker variable, which catches children that left the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Mapping, Sequence

from aiodocker.stream import Stream

from app.errors import BadRequest, ProviderUnavailable, SandboxNotRunning
from app.providers.base import TIMEOUT_EXIT_CODE, ExecResult, check_argv
from app.providers.docker.engine import EngineClient, half_close, mapped_errors
from app.providers.exec_wrapper import EXEC_MARKER, CappedBuffer, killer_argv, wrapped_argv

#: Seconds to wait for output to end after the group was killed.
KILL_DRAIN_SECONDS = 5.0
#: Seconds the kill exec itself may take.
KILL_TIMEOUT_SECONDS = 15.0
#: Seconds to wait for the Engine to record an exit code after output ended.
EXIT_CODE_WAIT_SECONDS = 5.0
_STDIN_CHUNK = 64 * 1024


class _Output:
    """stdout and stderr of one exec, each capped (demultiplexed from the Engine's stream)."""

    def __init__(self, limit: int) -> None:
        self.out = CappedBuffer(limit)
        self.err = CappedBuffer(limit)

    @property
    def stdout(self) -> bytearray:
        return self.out.data

    @property
    def stderr(self) -> bytearray:
        return self.err.data

    @property
    def truncated(self) -> bool:
        return self.out.truncated or self.err.truncated

    async def drain(self, stream: Stream) -> None:
        while (message := await stream.read_out()) is not None:
            (self.err if message.stream == 2 else self.out).add(message.data)


def _env_list(env: Mapping[str, str] | None, token: str) -> list[str]:
    items = []
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value or key == EXEC_MARKER:
            raise BadRequest(f"invalid environment variable name or value: {key!r}", field="env")
        items.append(f"{key}={value}")
    items.append(f"{EXEC_MARKER}={token}")
    return items


async def _feed_stdin(stream: Stream, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _STDIN_CHUNK):
        await stream.write_in(bytes(view[start : start + _STDIN_CHUNK]))
    half_close(stream)


async def run_exec(
    engine: EngineClient,
    container: str,
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None,
    env: Mapping[str, str] | None,
    stdin: bytes | None,
    max_output_bytes: int,
    user: str = "",
) -> ExecResult:
    """Run ``argv`` in ``container``; see ``Provider.exec`` for the contract."""
    check_argv(argv)
    if cwd is not None and (not cwd or cwd.startswith("-") or "\0" in cwd):
        raise BadRequest(f"invalid working directory: {cwd!r}", field="cwd")
    if timeout <= 0:
        raise BadRequest("timeout must be positive", field="timeout")
    token = secrets.token_hex(8)
    created = await engine.call(
        "POST",
        f"containers/{container}/exec",
        body={
            "AttachStdin": stdin is not None,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": wrapped_argv(cwd, argv),
            "Env": _env_list(env, token),
            "User": user,
        },
        ref=container,
    )
    exec_id = created["Id"]
    started = time.monotonic()
    output = _Output(max_output_bytes)
    stream = await engine.exec_stream(exec_id, container)
    timed_out = False
    feeder: asyncio.Task[None] | None = None
    reader = asyncio.create_task(output.drain(stream))
    try:
        if stdin is not None:
            feeder = asyncio.create_task(_feed_stdin(stream, stdin))
        done, _ = await asyncio.wait({reader}, timeout=timeout)
        if not done:
            timed_out = True
            await _kill_group(engine, container, token, user)
            done, _ = await asyncio.wait({reader}, timeout=KILL_DRAIN_SECONDS)
        if reader in done:
            with mapped_errors(container, what="exec output"):
                reader.result()
    except asyncio.CancelledError:
        # Nobody will read the result: do not leave the command running.
        await asyncio.shield(_kill_quietly(engine, container, token, user))
        raise
    finally:
        for task in (reader, feeder):
            if task is not None and not task.done():
                task.cancel()
        if feeder is not None and feeder.done() and not feeder.cancelled():
            feeder.exception()  # a command that stops reading its stdin early is not an error
        await stream.close()
    duration_ms = int((time.monotonic() - started) * 1000)
    exit_code = TIMEOUT_EXIT_CODE if timed_out else await _exit_code(engine, exec_id, container)
    return ExecResult(
        exit_code=exit_code,
        stdout=bytes(output.stdout),
        stderr=bytes(output.stderr),
        timed_out=timed_out,
        truncated=output.truncated,
        duration_ms=duration_ms,
    )


async def _kill_group(engine: EngineClient, container: str, token: str, user: str = "") -> None:
    """Kill the exec's process group (and marked strays) with a second exec as the same user."""
    created = await engine.call(
        "POST",
        f"containers/{container}/exec",
        body={
            "AttachStdout": True,
            "AttachStderr": True,
            "Cmd": killer_argv(token),
            # As the command's own user: with a non-root container user the Engine
            # gives even a root exec no capabilities, so root could not signal it.
            "User": user,
        },
        ref=container,
    )
    stream = await engine.exec_stream(created["Id"], container)
    try:
        async with asyncio.timeout(KILL_TIMEOUT_SECONDS):
            while await stream.read_out() is not None:
                pass
    except TimeoutError:
        pass  # the output drain below still bounds the whole exec
    finally:
        await stream.close()


async def _kill_quietly(engine: EngineClient, container: str, token: str, user: str) -> None:
    # Best effort on cancellation: the container may be gone already.
    with contextlib.suppress(Exception):
        await _kill_group(engine, container, token, user)


async def _exit_code(engine: EngineClient, exec_id: str, container: str) -> int:
    """The exit code the Engine recorded; it can lag the end of the output briefly."""
    deadline = time.monotonic() + EXIT_CODE_WAIT_SECONDS
    delay = 0.005
    while True:
        info = await engine.call("GET", f"exec/{exec_id}/json", ref=container)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() >= deadline:
            state = await engine.call("GET", f"containers/{container}/json", ref=container)
            if not state.get("State", {}).get("Running"):
                raise SandboxNotRunning(f"sandbox {container!r} stopped while the command ran", ref=container)
            raise ProviderUnavailable("the Docker Engine did not report the command's exit code")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
