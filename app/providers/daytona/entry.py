"""The entry command of a Daytona sandbox: saved at create, run in a background session.

Daytona's daemon is the sandbox's PID 1, so the entry command (the
supervisor) cannot be; it runs as a background command of the session
``sandbox-control-entry``. Its script is saved in the sandbox at create, so
every ``start`` can launch it again; ``end`` asks it to stop (SIGTERM through
the wrapper of ``exec``) and waits a bounded grace for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from daytona import SessionExecuteRequest

from app.errors import ProviderError, SandboxNotFound
from app.providers.base import check_argv
from app.providers.daytona.errors import DaytonaCalls, status_of
from app.providers.daytona.exec import (
    ENTRY_SESSION,
    STATE_DIR,
    entry_script,
    prepare_script,
    request_entry_stop_script,
)

log = logging.getLogger(__name__)

#: Seconds the entry command gets between SIGTERM and the machine stopping.
STOP_GRACE_SECONDS = 5.0
ENTRY_FILE = f"{STATE_DIR}/entry.sh"


class EntryCommand:
    """Entry-command operations on SDK sandboxes, through the provider's error boundary."""

    def __init__(self, calls: DaytonaCalls) -> None:
        self._calls = calls

    async def prepare(self, sandbox: Any, command: Sequence[str] | None) -> None:
        """One exec: /workspace exists; the entry script is saved for every later start."""
        script = prepare_script()
        if command is not None:
            check_argv(command)
            encoded = base64.b64encode(entry_script(command).encode()).decode()
            script += f" && mkdir -p {STATE_DIR} && printf %s {encoded} | base64 -d > {ENTRY_FILE}"
        response = await self._calls.call("prepare", lambda: sandbox.process.exec(script, timeout=60), ref=sandbox.id)
        if response.exit_code not in (0, None):
            raise ProviderError(f"daytona sandbox {sandbox.id} could not be prepared: {response.result[-500:]}")

    async def launch(self, sandbox: Any) -> None:
        """Start the saved entry script in the background session (a fresh one per launch)."""
        ref = sandbox.id
        # Normally absent (sessions end with the machine); a leftover of a dead entry is replaced.
        with contextlib.suppress(ProviderError, SandboxNotFound):
            await self._calls.call("delete session", lambda: sandbox.process.delete_session(ENTRY_SESSION), ref=ref)
        await self._calls.call("create session", lambda: sandbox.process.create_session(ENTRY_SESSION), ref=ref)
        request = SessionExecuteRequest(command=f"sh {ENTRY_FILE}", run_async=True)
        await self._calls.call(
            "entry command", lambda: sandbox.process.execute_session_command(ENTRY_SESSION, request), ref=ref
        )

    async def exit_code(self, sandbox: Any) -> int | None:
        """The entry command's exit code; ``None`` while it runs; -1 when it is not there."""
        try:
            session = await self._calls.call(
                "entry status", lambda: sandbox.process.get_session(ENTRY_SESSION), ref=None
            )
        except ProviderError as exc:
            if exc.details.get("status") == 404 or status_of(exc.__cause__ or exc) == 404:
                return -1
            raise
        commands = list(session.commands or [])
        if not commands:
            return -1
        code = commands[-1].exit_code
        return None if code is None else int(code)

    async def end(self, sandbox: Any) -> None:
        """Ask the entry wrapper to SIGTERM its command; wait (bounded) for it to end."""
        try:
            await self._calls.call(
                "stop entry", lambda: sandbox.process.exec(request_entry_stop_script(), timeout=30), ref=sandbox.id
            )
            # Polling, bounded by the grace: the entry's end is only visible through the API.
            for _ in range(int(STOP_GRACE_SECONDS / 0.2)):
                if await self.exit_code(sandbox) is not None:
                    break
                await asyncio.sleep(0.2)
        except (ProviderError, SandboxNotFound) as exc:
            log.warning("daytona provider: graceful stop of the entry command in %s failed: %s", sandbox.id, exc)
