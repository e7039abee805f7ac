"""The build's side inside its sandbox: a recording wrapper around the runtime, and the follower that reads it.

The runtime runs as the build sandbox's entry command under a small shell
wrapper that writes its output to ``/tmp/sandbox-build/log`` and its exit
status to ``.../exit``, then idles. The build therefore goes on while the
service is down, and the follower reads the log (from the offset the build
recorded) and the exit status through ``exec``, on every provider alike.
Lines are masked of the sandbox's secret values before they are stored; the
result line (``SANDBOX_BUILD_COMPLETE``/``FAILED``) is read from the log file
itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import Protocol

from app.errors import ProviderUnavailable, SandboxNotFound, SandboxNotRunning
from app.logging import Redactor, get_logger
from app.providers.base import ExecResult
from app.services.secret_values import sandbox_secret_values
from app.storage.state.builds import BuildRecord
from app.storage.state.times import utcnow
from sandbox_runtime.contract import BuildResult, parse_build_result

log = get_logger("builds")

#: Where the wrapper keeps the runtime's output and exit status inside the build sandbox.
BUILD_DIR = "/tmp/sandbox-build"
#: Runs the runtime with its output (and setup.sh's, followed as it is written) appended to
#: ``$d/log``, records its exit status, then idles so the sandbox stays readable.
_WRAPPER = (
    'd="$0"; mkdir -p "$d"; : >"$d/log"; '
    'h="${RUNTIME_RUN_DIR:-/tmp/sandbox-runtime}/hooks/setup.log"; '
    'tail -n +1 -s 0.2 -F "$h" >>"$d/log" 2>/dev/null & t=$!; '
    '"$@" >>"$d/log" 2>&1; s=$?; '
    'sleep 0.5; kill "$t" 2>/dev/null; wait "$t" 2>/dev/null; '
    'echo "$s" >"$d/exit.tmp"; mv "$d/exit.tmp" "$d/exit"; '
    "while :; do sleep 3600; done"
)
#: First line: ``E<status>`` once the runtime exited, else ``R``; then log bytes from ``$1``, at most ``$2``.
#: The exit file is looked at first: when it exists, the log is complete.
_POLL = (
    'if [ -e "$0/exit" ]; then printf "E%s\\n" "$(cat "$0/exit")"; else echo R; fi; '
    'tail -c "+$(($1 + 1))" "$0/log" 2>/dev/null | head -c "$2"'
)
_RESULT = 'grep -a -E "^SANDBOX_BUILD_(COMPLETE|FAILED) " "$0/log" | tail -n 1'
#: Bytes read per poll.
READ_BYTES = 256 * 1024
#: A partial line longer than this is stored without waiting for its end.
MAX_PENDING_LINE = 64 * 1024
#: Characters of the log's end quoted as the error of a build that printed no result.
ERROR_TAIL_CHARS = 2000


def build_command(runtime: list[str]) -> list[str]:
    """The build sandbox's entry command: ``runtime`` under the recording wrapper."""
    return ["/bin/sh", "-c", _WRAPPER, BUILD_DIR, *runtime]


class BuildFailed(Exception):
    """A build cannot produce an image; the message is what the failure callback says."""


class BuildStopped(Exception):
    """The build ended elsewhere (cancelled, possibly on another replica): stop following it."""


class Exec(Protocol):
    """The provider's ``exec``, all the follower needs of it."""

    def __call__(self, ref: str, argv: list[str], *, timeout: float) -> Awaitable[ExecResult]: ...


class BuildLog(Protocol):
    """Where the followed log is stored (the state store's builds), and the build's current state."""

    async def get(self, build_id: str) -> BuildRecord | None: ...

    async def append_log(self, build_id: str, text: str, *, log_offset: int) -> None: ...

    async def read_log(self, build_id: str, *, after_seq: int = 0, limit: int = 500) -> list[tuple[int, str]]: ...


class BuildFollower:
    """Follows one build sandbox's log into the store until the runtime exits."""

    def __init__(
        self, exec_: Exec, build_log: BuildLog, *, timeout_seconds: int, poll_seconds: float, max_log_bytes: int
    ) -> None:
        self._exec = exec_
        self._log = build_log
        self._timeout_seconds = timeout_seconds
        self._poll_seconds = poll_seconds
        self._max_log_bytes = max_log_bytes

    async def watch(self, build: BuildRecord, ref: str) -> str:
        """Follow the build's log until the runtime exits; returns the head sha or raises ``BuildFailed``."""
        redactor = Redactor(await sandbox_secret_values(self._exec, ref))
        offset = build.log_offset
        kept = build.log_bytes
        pending = b""
        deadline = build.deadline_at or (utcnow() + timedelta(seconds=self._timeout_seconds))
        while True:
            if utcnow() >= deadline:
                raise BuildFailed(f"build timed out after {self._timeout_seconds} s")
            current = await self._log.get(build.id)
            if current is None or not current.active:  # cancelled, maybe by another replica
                raise BuildStopped(build.id)
            exit_status, data = await self._poll(ref, offset)
            pending += data
            offset += len(data)
            finished = exit_status is not None and len(data) < READ_BYTES
            # Whole lines only (a secret split across two reads would escape the mask).
            cut = len(pending) if finished or len(pending) > MAX_PENDING_LINE else pending.rfind(b"\n") + 1
            if cut:
                text = redactor.scrub(pending[:cut].decode(errors="replace"))
                pending = pending[cut:]
                text, kept = self._capped(text, kept)
                await self._log.append_log(build.id, text, log_offset=offset - len(pending))
            if finished:
                break
            if len(data) < READ_BYTES:
                await asyncio.sleep(self._poll_seconds)
        result = await self._result(ref)
        if result is not None and result.success and result.head_sha:
            log.info("build.completed", build_id=build.id, head_sha=result.head_sha)
            return result.head_sha
        if result is not None and result.error:
            raise BuildFailed(redactor.scrub(result.error))
        tail = await self._log.read_log(build.id, after_seq=0)
        text = "".join(chunk for _seq, chunk in tail)[-ERROR_TAIL_CHARS:]
        raise BuildFailed(f"build exited with status {exit_status} without a result: {text}".strip())

    def _capped(self, text: str, kept: int) -> tuple[str, int]:
        limit = self._max_log_bytes
        if kept >= limit:
            return "", kept
        data = text.encode()
        if kept + len(data) > limit:
            text = data[: limit - kept].decode(errors="ignore") + "\n[log truncated: SANDBOX_BUILD_LOG_MAX_BYTES]\n"
        return text, kept + len(text.encode())

    async def _poll(self, ref: str, offset: int) -> tuple[int | None, bytes]:
        try:
            result = await self._exec(ref, ["sh", "-c", _POLL, BUILD_DIR, str(offset), str(READ_BYTES)], timeout=60)
        except (SandboxNotFound, SandboxNotRunning) as exc:
            raise BuildFailed(f"the build sandbox stopped: {exc.message}") from None
        except ProviderUnavailable as exc:
            # Transient: the build goes on in its sandbox; the deadline bounds the waiting.
            log.warning("build.poll_failed", error=exc.message)
            return None, b""
        head, _, data = result.stdout.partition(b"\n")
        status = head.decode(errors="replace")
        if status.startswith("E"):
            try:
                return int(status[1:] or "1"), data
            except ValueError:
                return 1, data
        return None, data

    async def _result(self, ref: str) -> BuildResult | None:
        result = await self._exec(ref, ["sh", "-c", _RESULT, BUILD_DIR], timeout=60)
        return parse_build_result(result.stdout.decode(errors="replace"))
