"""``/v1/sandboxes/{id}/processes``: background processes, their logs, stdin and signals."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from app.schemas.common import StrictModel
from app.schemas.sandboxes import CommandRequest

#: A process handle: the service's own id, not an OS pid (execs need not share a pid namespace).
ProcessId = Annotated[str, Field(pattern=r"^[a-f0-9]{12}$", description="process handle (12 hex digits)")]
SignalName = Literal["TERM", "KILL", "INT"]
LogStream = Literal["stdout", "stderr"]


class StartProcessRequest(CommandRequest):
    """``POST /v1/sandboxes/{id}/processes``: start ``command`` in the background."""


class ProcessView(StrictModel):
    """A background process as its files in the sandbox describe it."""

    pid: str
    command: list[str] | str
    cwd: str
    started_at: datetime
    status: Literal["running", "exited"]
    exit_code: int | None = Field(description="null while running, and when the process was lost (sandbox stopped)")
    stdout_bytes: int
    stderr_bytes: int
    stdin_closed: bool
    truncated: bool = Field(description="a stream reached the per-process log cap; output past it was dropped")


class ProcessList(StrictModel):
    processes: list[ProcessView]


class SignalRequest(StrictModel):
    """``POST …/processes/{pid}/signal``: sent to the process's whole group."""

    signal: SignalName
