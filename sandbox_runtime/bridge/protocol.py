"""Wire models of the bridge ⇄ control plane WebSocket (JSON text frames, camelCase).

Outbound events are built with ``extra="forbid"`` models so we never send a typo;
inbound commands are parsed tolerantly (``extra="ignore"``) because the control
plane adds fields over time and an unknown field must not drop a prompt.

Critical events (``execution_complete``, ``error``, ``snapshot_ready``,
``push_complete``, ``push_error``) carry an ``ackId``; the bridge re-sends them,
across reconnects and restarts, until the control plane answers
``{"type": "ack", "ackId": ...}``. The receiver de-duplicates by ``ackId``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from sandbox_runtime.identity import GitIdentity

CRITICAL_EVENT_TYPES = frozenset({"execution_complete", "error", "snapshot_ready", "push_complete", "push_error"})


class OutboundEvent(BaseModel):
    """Base of every event the bridge sends."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_wire(self, sandbox_id: str) -> dict[str, Any]:
        """The JSON object to send, stamped with the sandbox id and the time of production."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        data["sandboxId"] = sandbox_id
        data.setdefault("timestamp", time.time())
        return data


class ReadyEvent(OutboundEvent):
    """First frame of every connection."""

    type: Literal["ready"] = "ready"
    opencode_session_id: str | None = Field(default=None, alias="opencodeSessionId")


class HeartbeatEvent(OutboundEvent):
    """Liveness; ``status`` is ``busy`` while a prompt executes."""

    type: Literal["heartbeat"] = "heartbeat"
    status: Literal["ready", "busy"] = "ready"


class TokenEvent(OutboundEvent):
    """Assistant text so far for one text part (cumulative, not a delta)."""

    type: Literal["token"] = "token"
    content: str
    message_id: str = Field(alias="messageId")
    part_id: str | None = Field(default=None, alias="partId")


class ToolCallEvent(OutboundEvent):
    """A tool call changed state (pending, running, completed, error)."""

    type: Literal["tool_call"] = "tool_call"
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    call_id: str = Field(alias="callId")
    status: str
    output: str | None = None
    message_id: str = Field(alias="messageId")


class StepStartEvent(OutboundEvent):
    """The agent started a reasoning/tool step."""

    type: Literal["step_start"] = "step_start"
    message_id: str = Field(alias="messageId")


class StepFinishEvent(OutboundEvent):
    """The agent finished a step; cost and token counts as reported by the env server."""

    type: Literal["step_finish"] = "step_finish"
    message_id: str = Field(alias="messageId")
    cost: float | None = None
    tokens: dict[str, Any] | None = None
    reason: str | None = None


class ErrorEvent(OutboundEvent):
    """The env server reported an error for the running prompt. Critical."""

    type: Literal["error"] = "error"
    error: str
    message_id: str | None = Field(default=None, alias="messageId")


class ExecutionCompleteEvent(OutboundEvent):
    """A prompt finished; ``success`` is false after any error or a stop. Critical."""

    type: Literal["execution_complete"] = "execution_complete"
    message_id: str = Field(alias="messageId")
    success: bool
    error: str | None = None


class SnapshotReadyEvent(OutboundEvent):
    """Answer to ``snapshot``: runtime state is flushed to disk; the service may snapshot. Critical."""

    type: Literal["snapshot_ready"] = "snapshot_ready"
    opencode_session_id: str | None = Field(default=None, alias="opencodeSessionId")


class PushCompleteEvent(OutboundEvent):
    """A ``push`` succeeded. Critical."""

    type: Literal["push_complete"] = "push_complete"
    branch_name: str | None = Field(default=None, alias="branchName")
    head_sha: str | None = Field(default=None, alias="headSha")


class PushErrorEvent(OutboundEvent):
    """A ``push`` failed; ``error`` is redacted. Critical."""

    type: Literal["push_error"] = "push_error"
    branch_name: str | None = Field(default=None, alias="branchName")
    error: str


# --- commands --------------------------------------------------------------------------------


class InboundModel(BaseModel):
    """Base of every command (and nested object) the control plane sends."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _object_or_none(value: Any) -> Any:
    """A nested object the control plane sent in a shape we cannot use counts as absent."""
    return value if isinstance(value, dict) else None


def _text_or_none(value: Any) -> Any:
    return value if isinstance(value, str) and value.strip() else None


def _objects(value: Any) -> Any:
    """Keep the objects of a list (anything else in it, or a non-list, is dropped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


OptionalText = Annotated[str | None, BeforeValidator(_text_or_none)]


class PromptAuthor(InboundModel):
    """Who sent the prompt; the git identity of the agent's commits.

    Control planes send ``scmName``/``scmEmail`` (since early 2026) or ``githubName``/
    ``githubEmail`` (before); both are read, the newer first.
    """

    user_id: OptionalText = Field(default=None, alias="userId")
    scm_name: OptionalText = Field(default=None, alias="scmName")
    scm_email: OptionalText = Field(default=None, alias="scmEmail")
    github_name: OptionalText = Field(default=None, alias="githubName")
    github_email: OptionalText = Field(default=None, alias="githubEmail")

    def identity(self) -> GitIdentity | None:
        """The identity the author names, None when they name no usable one."""
        return GitIdentity.of(self.scm_name, self.scm_email) or GitIdentity.of(self.github_name, self.github_email)


class PromptAttachment(InboundModel):
    """A file sent with a prompt: inline (base64 ``content``), by ``url``, or an ``uploadId`` to fetch.

    Shapes vary across control-plane versions, so every field is optional; one that
    leads nowhere is skipped (with a warning in the log), never the whole prompt.
    """

    name: OptionalText = None
    filename: OptionalText = None
    mime_type: OptionalText = Field(default=None, alias="mimeType")
    mime: OptionalText = None
    content: OptionalText = None
    url: OptionalText = None
    upload_id: OptionalText = Field(default=None, alias="uploadId")


class PromptCommand(InboundModel):
    """Run ``content`` in the env server session; ``model`` is ``provider/model`` or a bare model id."""

    type: Literal["prompt"]
    message_id: str = Field(alias="messageId", min_length=1)
    content: str
    model: OptionalText = None
    reasoning_effort: OptionalText = Field(default=None, alias="reasoningEffort")
    author: Annotated[PromptAuthor | None, BeforeValidator(_object_or_none)] = None
    attachments: Annotated[list[PromptAttachment], BeforeValidator(_objects)] = Field(default_factory=list)


class StopCommand(InboundModel):
    """Abort the running prompt (and drop queued ones)."""

    type: Literal["stop"]


class SnapshotCommand(InboundModel):
    """The service is about to snapshot: flush state, answer ``snapshot_ready``."""

    type: Literal["snapshot"]


class ShutdownCommand(InboundModel):
    """The session is over: the bridge exits 0 and the supervisor shuts the sandbox down."""

    type: Literal["shutdown"]


class PushSpec(InboundModel):
    """Open-Inspect style push specification."""

    target_branch: str | None = Field(default=None, alias="targetBranch")
    refspec: str | None = None
    force: bool = False
    remote_url: str | None = Field(default=None, alias="remoteUrl")


class PushCommand(InboundModel):
    """Push the agent's work; ``token`` (optional) supersedes the clone token for this push."""

    type: Literal["push"]
    branch_name: str | None = Field(default=None, alias="branchName")
    push_spec: PushSpec | None = Field(default=None, alias="pushSpec")
    token: str | None = None


class AckCommand(InboundModel):
    """The control plane stored a critical event."""

    type: Literal["ack"]
    ack_id: str = Field(alias="ackId", min_length=1)


Command = Annotated[
    PromptCommand | StopCommand | SnapshotCommand | ShutdownCommand | PushCommand | AckCommand,
    Field(discriminator="type"),
]
_COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


class UnknownCommand(ValueError):
    """The frame is not JSON, or not a command this bridge understands."""


def parse_command(raw: str | bytes) -> Command:
    """Parse one inbound frame.

    Raises:
        UnknownCommand: malformed JSON, unknown ``type`` or invalid fields.
    """
    try:
        return _COMMAND_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise UnknownCommand(str(exc.errors(include_url=False, include_input=False))[:500]) from None
