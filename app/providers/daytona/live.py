"""Streamed exec on Daytona: a session command whose output arrives over the log WebSocket.

Daytona streams a session command's logs live (``get_session_command_logs_async``:
a WebSocket, stdout and stderr told apart), and takes its input
(``send_session_command_input``), but both are *text*: the SDK decodes output as
UTF-8 with replacement, and input is a string. Our ``exec_stream`` is
binary-safe, so the command runs under a wrapper that speaks base64 lines on
both sides:

- each of stdout and stderr goes through ``enc``: a loop of ``dd count=1`` (one
  ``read``: whatever the pipe holds, so output is not held back until a buffer
  fills, as ``base64`` alone would) piped to ``base64``, one line per read;
- stdin (when the caller streams one) is fed by ``dec``, which decodes one line
  at a time and ends at the ``.`` line; it writes into a fifo so a command
  that exits without reading all its input is not kept waiting for it.

The deadline is coreutils ``timeout`` in the sandbox (as the one-shot wrapper
of ``exec``), backed by our own clock; a consumer that leaves early, or the
deadline, kills the command's process group (``timeout`` leads it; its pid is
in the work dir) and deletes the session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import shlex
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from daytona import SessionExecuteRequest

from app.errors import ProviderError
from app.providers.base import TIMEOUT_EXIT_CODE, ExecEvent, ExecResult, OutputChunk, StreamName
from app.providers.daytona.errors import translate
from app.providers.daytona.exec import KILL_AFTER, STATE_DIR

log = logging.getLogger(__name__)

#: Raw bytes per stdin line sent (base64 grows it by a third).
STDIN_LINE_BYTES = 48 * 1024
#: The stdin line that means "end of input".
END_OF_INPUT = "."
#: ``timeout`` exits 124 on expiry, or 137 (SIGKILL) when the command ignored SIGTERM.
_TIMEOUT_CODES = {TIMEOUT_EXIT_CODE, 128 + 9}


def live_script(
    argv: Sequence[str], *, token: str, timeout: float, cwd: str, env: Mapping[str, str], has_stdin: bool
) -> str:
    """The session command that runs ``argv`` with base64-line streams (see the module docstring)."""
    work = shlex.quote(f"{STATE_DIR}/live-{token}")
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    command = " ".join(shlex.quote(arg) for arg in argv)
    source = '"$w/in"' if has_stdin else "/dev/null"
    feed = (
        f"""exec 3<&0
mkfifo "$w/in"
( while IFS= read -r l; do [ "$l" = {END_OF_INPUT} ] && break; printf '%s' "$l" | base64 -d; done ) <&3 >"$w/in" &
dp=$!"""
        if has_stdin
        else "dp="
    )
    script = f"""
w={work}
mkdir -p "$w" || exit 125
enc() {{
  while c=$(dd bs=65536 count=1 2>/dev/null | base64 | tr -d '\\n') && [ -n "$c" ]; do printf '%s\\n' "$c"; done
}}
mkfifo "$w/err"
enc <"$w/err" >&2 &
ep=$!
{feed}
{{
  if cd -- {shlex.quote(cwd)} 2>"$w/cd"; then
    timeout -k {KILL_AFTER} {timeout:.3f} env {assignments} {command} <{source} 2>"$w/err" &
    echo $! >"$w/pid"
    wait $!
    echo $? >"$w/rc"
  else
    echo 1 >"$w/rc"; cat "$w/cd" >"$w/err"
  fi
}} | enc
[ -n "$dp" ] && kill "$dp" 2>/dev/null
wait "$ep"
rc=$(cat "$w/rc" 2>/dev/null || echo 125)
rm -rf "$w"
exit "$rc"
"""
    return "sh -c " + shlex.quote(script)


def kill_script(token: str) -> str:
    """Kill the process group the wrapper's ``timeout`` leads (a consumer left, or our clock ran out)."""
    pid_file = shlex.quote(f"{STATE_DIR}/live-{token}/pid")
    return f"sh -c {shlex.quote(f'p=$(cat {pid_file} 2>/dev/null) && kill -KILL -- -$p $p 2>/dev/null; true')}"


class _Lines:
    """Turns one stream's base64 lines, as text arrives, into output chunks (up to a cap)."""

    def __init__(self, stream: StreamName, cap: int, out: asyncio.Queue[OutputChunk | None]) -> None:
        self._stream: StreamName = stream
        self._pending = ""
        self._left = cap
        self.truncated = False
        self._out = out

    def feed(self, text: str) -> None:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not line:
                continue
            try:
                data = base64.b64decode(line, validate=True)
            except binascii.Error:  # the wrapper's own complaint (no fifo, no space): passed on as text
                data = (line + "\n").encode()
            if len(data) > self._left:
                self.truncated = True
                data = data[: self._left]
            self._left -= len(data)
            if data:
                self._out.put_nowait(OutputChunk(self._stream, data))


async def _send_stdin(process: Any, session: str, command_id: str, stdin: AsyncIterator[bytes]) -> None:
    async for chunk in stdin:
        for start in range(0, len(chunk), STDIN_LINE_BYTES):
            line = base64.b64encode(chunk[start : start + STDIN_LINE_BYTES]).decode()
            await process.send_session_command_input(session, command_id, line + "\n")
    await process.send_session_command_input(session, command_id, END_OF_INPUT + "\n")


async def live_exec(
    sandbox: Any,
    ref: str,
    argv: Sequence[str],
    *,
    timeout: float,
    grace: float,
    cwd: str,
    env: Mapping[str, str],
    stdin: AsyncIterator[bytes] | None,
    max_output_bytes: int,
) -> AsyncGenerator[ExecEvent, None]:
    """Run ``argv`` in a session of its own and yield its output as it comes, then its result."""
    process = sandbox.process
    token = secrets.token_hex(8)
    session = f"sandbox-control-exec-{token}"
    script = live_script(argv, token=token, timeout=timeout, cwd=cwd, env=env, has_stdin=stdin is not None)
    chunks: asyncio.Queue[OutputChunk | None] = asyncio.Queue()
    streams = {name: _Lines(name, max(0, max_output_bytes), chunks) for name in ("stdout", "stderr")}
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    finished = False
    try:
        await process.create_session(session)
    except Exception as exc:
        raise translate(exc, "exec", ref) from exc
    try:
        answer = await process.execute_session_command(session, SessionExecuteRequest(command=script, run_async=True))
        command_id = answer.cmd_id

        async def pump() -> None:
            try:
                await process.get_session_command_logs_async(
                    session, command_id, streams["stdout"].feed, streams["stderr"].feed
                )
            finally:
                chunks.put_nowait(None)

        tasks.append(asyncio.create_task(pump()))
        if stdin is not None:
            tasks.append(asyncio.create_task(_send_stdin(process, session, command_id, stdin)))
        timed_out = False
        try:
            async with asyncio.timeout(timeout + grace):
                while (chunk := await chunks.get()) is not None:
                    yield chunk
                await tasks[0]  # the log stream's own failure, if any
        except TimeoutError:
            timed_out = True
        exit_code = TIMEOUT_EXIT_CODE
        if not timed_out:
            exit_code = await _exit_code(process, session, command_id)
        elapsed = time.monotonic() - started
        timed_out = timed_out or (exit_code in _TIMEOUT_CODES and elapsed >= timeout * 0.95)
        finished = not timed_out
        result = ExecResult(
            exit_code=TIMEOUT_EXIT_CODE if timed_out else exit_code,
            stdout=b"",
            stderr=b"",
            timed_out=timed_out,
            truncated=any(lines.truncated for lines in streams.values()),
            duration_ms=int(elapsed * 1000),
        )
    except ProviderError:
        raise
    except Exception as exc:  # an SDK failure (a GeneratorExit or cancellation passes)
        raise translate(exc, "exec", ref) from exc
    else:
        yield result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.shield(_end(sandbox, session, token, kill=not finished))


async def _exit_code(process: Any, session: str, command_id: str) -> int:
    """The command's exit code: the log stream can end a moment before the code is recorded."""
    for _ in range(50):
        command = await process.get_session_command(session, command_id)
        if command.exit_code is not None:
            return int(command.exit_code)
        await asyncio.sleep(0.1)
    raise ProviderError(f"daytona never reported the exit code of session command {command_id}")


async def _end(sandbox: Any, session: str, token: str, *, kill: bool) -> None:
    """Kill what still runs (when the command did not finish) and delete the session; never raises."""
    try:
        if kill:
            await sandbox.process.exec(kill_script(token), timeout=30)
        await sandbox.process.delete_session(session)
    except Exception as exc:  # the sandbox may be gone; the session dies with it
        log.warning("daytona provider: could not end exec session %s: %s", session, type(exc).__name__)


__all__ = ["live_exec", "live_script"]
