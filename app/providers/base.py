"""The provider contract: where a sandbox runs, behind one small async ABC.

Services build everything else (snapshots, pools, builds, files over HTTP) on
these few methods, once, for every provider. A provider translates its own
failures at this boundary into the errors of ``app.errors``:

Raises (any method taking ``ref``):
    SandboxNotFound: the provider has no sandbox with that reference.
    SandboxNotRunning: the operation needs a running sandbox and it is stopped.
    ProviderUnavailable: transient trouble (engine down, 5xx, timeouts); retryable.
    ProviderError / ProviderAuthError: a definitive provider-side failure.
    UnsupportedSpec: ``create`` was asked for something it cannot honour.

A command that exits non-zero or runs out of time is a *result*
(``ExecResult``), never an exception: "command failed" is not "sandbox down".

A provider is built by ``registry.create_provider`` as ``cls(config, context)``:
``config`` is its own sub-config (``Settings.local``, ``Settings.docker``, ...) and
``context`` what it needs from the core settings (``ProviderContext``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from app.errors import BadRequest, PreviewUnsupported, UnsupportedSpec
from app.providers.ports import PortEndpoint
from app.providers.terminal import PtySession

ProviderStatus = Literal["running", "stopped", "failed"]

#: Exit code reported for a command killed at its deadline (as coreutils ``timeout``).
TIMEOUT_EXIT_CODE = 124


class Resources(BaseModel):
    """Requested (and, in a sandbox record, effective) resources."""

    model_config = ConfigDict(extra="forbid")

    cpu: float | None = Field(default=None, gt=0, le=256, description="CPU cores")
    memory_mb: int | None = Field(default=None, ge=16, le=1024 * 1024)
    disk_mb: int | None = Field(default=None, ge=16, le=64 * 1024 * 1024)
    gpu: str | None = Field(default=None, min_length=1, max_length=64, description="e.g. 'A10G' or 'any'")
    pids: int | None = Field(default=None, ge=8, le=1_000_000, description="max processes")


@dataclass(frozen=True)
class SandboxSpec:
    """What a provider needs to create one sandbox."""

    sandbox_id: str
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    #: ``None`` = provider default; ``"host"``, ``"none"`` or a named network.
    network: str | None = None
    #: Long-running entry command (e.g. the supervisor); ``None`` = idle.
    command: Sequence[str] | None = None
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class ProviderSandbox:
    """A sandbox as the provider sees it."""

    provider_object_id: str
    status: ProviderStatus
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    created_at: datetime | None = None
    #: Effective resources after the provider merged defaults and limits.
    resources: Resources = field(default_factory=Resources)
    #: Why the sandbox is in its status, when the provider knows (e.g. a ``failed``
    #: pod's "Evicted: The node was low on resource: memory"); for events and records.
    status_reason: str | None = None


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one command; a timeout is a result, not an error."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    #: True when stdout or stderr was cut at the output limit.
    truncated: bool = False
    duration_ms: int = 0


#: One of the two output streams of a command.
StreamName = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class OutputChunk:
    """Bytes a streamed command wrote to one of its streams, in the order produced."""

    stream: StreamName
    data: bytes


#: What ``exec_stream`` yields: output chunks, then one ``ExecResult`` (with empty
#: ``stdout``/``stderr``: the output went out as chunks) as the last item.
ExecEvent = OutputChunk | ExecResult


@dataclass(frozen=True)
class ExitEvent:
    """A sandbox's entry command ended on its own (not through ``stop``/``delete``)."""

    provider_object_id: str
    #: Its exit status; None when the provider cannot tell.
    exit_code: int | None
    #: The end of its output, when the provider keeps it (else empty).
    output_tail: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What a provider can honour; services refuse the rest with 422."""

    gpu: bool = False
    stop_start: bool = True
    max_disk_mb: int | None = None
    #: Network modes accepted in ``SandboxSpec.network``; ``None`` = any name.
    networks: frozenset[str] | None = frozenset({"host", "none"})
    #: Sandboxes share one loopback (e.g. local sandboxes on the host network):
    #: services listening inside them need a port of their own.
    shared_loopback: bool = False
    #: ``commit_image`` saves a sandbox's filesystem as a native image (repo images).
    image_commit: bool = False
    #: Tar streams ``import_tar`` extracts at once when its stream can be split into
    #: lanes (``LaneSplittable``); 1 = it always reads the stream as one.
    import_lanes: int = 1
    #: ``watch_exits`` reports entry commands that end, within about a second; without it
    #: the service learns of an exit when it next reads the sandbox's status.
    exit_events: bool = False
    #: ``exec_stream`` yields output as the command produces it; False: the backend answers
    #: an exec only once it ended, so the output comes in one go just before the result.
    live_output: bool = True
    #: A process an exec starts in a session of its own outlives that exec (containers);
    #: False: it ends with the exec (one pid namespace per exec), so a background process
    #: needs its start exec held open for its whole life.
    detached_processes: bool = False


@dataclass(frozen=True)
class ProviderContext:
    """What every provider needs from the core settings."""

    #: The service's data dir (``SANDBOX_DATA_DIR``); a provider keeps its own state below it.
    data_dir: Path
    #: Tags this service's sandboxes on a backend other services may share, and filters
    #: ``list`` to them (``Settings.instance_scope``).
    scope: str
    #: The image of a sandbox that names none (``SANDBOX_BASE_IMAGE``).
    base_image: str | None
    #: Lifetime of a sandbox whose spec names none (``SANDBOX_DEFAULT_TTL_SECONDS``), for a
    #: backend that must be told one at create (Modal); the service's reaper enforces TTLs.
    default_ttl_seconds: int | None = None


@runtime_checkable
class LaneSplittable(Protocol):
    """A tar stream that can also be extracted as rounds of concurrent lane streams.

    Snapshot sections offer it (``app.snapshots.sections.Section``; ``app.snapshots.fanout``
    explains why extracting the lanes of one round concurrently into one directory is as
    safe as one ``tar``). Each round must be extracted completely, all its streams at
    once, before the next is asked for. Call ``rounds`` at most once, and only instead
    of reading the stream itself.
    """

    def rounds(self, lanes: int) -> AsyncGenerator[Sequence[AsyncIterator[bytes]], None]:
        """Rounds of at most ``lanes`` tar streams."""
        ...


def lane_rounds(data: AsyncIterator[bytes], lanes: int) -> AsyncGenerator[Sequence[AsyncIterator[bytes]], None] | None:
    """``data`` as rounds of ``lanes`` concurrent tar streams, or ``None``: read it as one stream.

    For ``import_tar`` of a provider whose ``capabilities.import_lanes`` is ``lanes``:
    ``None`` when ``lanes`` is below 2 or ``data`` cannot be split (see ``LaneSplittable``).
    """
    if lanes < 2 or not isinstance(data, LaneSplittable):
        return None
    return data.rounds(lanes)


def check_argv(argv: Sequence[str]) -> None:
    """Refuse a command that is not a non-empty list of strings without NUL bytes.

    Every provider checks ``exec`` argv and entry commands with it, so the refusal is
    the same everywhere: ``BadRequest`` on ``command``, the request field.
    """
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise BadRequest("command must be a non-empty list of strings without NUL bytes", field="command")


class Provider(abc.ABC):
    """Async interface every sandbox backend implements.

    Implementations must not block the event loop: subprocesses are async, sync
    SDKs run in threads.
    """

    #: Registry name, e.g. ``"local"``.
    name: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self, config: BaseModel | None, context: ProviderContext) -> None:
        """Build the provider from its own sub-config and the core ``context``; no I/O yet (``aopen``).

        Each provider narrows ``config`` to its settings class (``LocalSettings``, ...);
        one that needs no settings of its own accepts ``None``.
        """
        self.context = context

    async def aopen(self) -> None:  # noqa: B027 - optional hook
        """Prepare the provider (connect, check binaries). Called once at start."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections. Sandboxes keep running."""

    def runtime_command(self) -> list[str]:
        """The command that starts the in-sandbox supervisor on this provider's sandboxes.

        Images built from ``Dockerfile.sandbox`` (and cloud images derived from
        it) have the runtime on the default ``python3``; a provider whose
        sandboxes get it another way overrides this.
        """
        return ["python3", "-m", "sandbox_runtime"]

    def watch_exits(self) -> AsyncIterator[ExitEvent]:
        """Entry commands of this service's sandboxes that end on their own, as they end (``capabilities.exit_events``).

        Runs until cancelled. A provider that cannot see exits keeps this default,
        which ends at once.
        """
        return _no_events()

    async def ping(self) -> None:
        """Readiness check: raise ``ProviderUnavailable`` when the backend cannot serve."""
        await self.list({"sandbox-control.ping": "1"})

    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        """Create and start a sandbox; returns once it can run commands."""

    @abc.abstractmethod
    async def start(self, ref: str) -> None:
        """Resume a stopped sandbox with its filesystem intact (idempotent)."""

    @abc.abstractmethod
    async def stop(self, ref: str) -> None:
        """End every process of the sandbox but keep its filesystem (idempotent)."""

    @abc.abstractmethod
    async def delete(self, ref: str) -> None:
        """Remove the sandbox and its filesystem. Missing → ``SandboxNotFound``."""

    @abc.abstractmethod
    async def status(self, ref: str) -> ProviderStatus:
        """Current status. Missing → ``SandboxNotFound``."""

    @abc.abstractmethod
    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        """Sandboxes this service created whose labels include ``labels``."""

    @abc.abstractmethod
    async def exec(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> ExecResult:
        """Run ``argv`` inside the sandbox; kill it (whole process group) at ``timeout``.

        On expiry the result has ``timed_out=True`` and exit code 124. Output
        beyond ``max_output_bytes`` per stream is dropped and ``truncated`` set.
        """

    @abc.abstractmethod
    def exec_stream(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: AsyncIterator[bytes] | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> AsyncGenerator[ExecEvent, None]:
        """Run ``argv`` as ``exec`` does, yielding its output as it is produced.

        Yields ``OutputChunk``s in the order the provider read them, then exactly one
        ``ExecResult`` (exit code, ``timed_out``, ``truncated``, duration; no output).
        ``stdin`` is copied into the command as it arrives and closed at its end.
        Deadline, caps and the process-group kill are those of ``exec``. A consumer
        that stops iterating (``aclose``) or is cancelled kills the command.
        Errors before the command starts raise on the first ``__anext__``.
        """

    @abc.abstractmethod
    def open_pty(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PtySession:
        """Run ``argv`` on a new terminal of ``cols`` x ``rows``; it starts when its output is read.

        A provider without a native terminal mixes in ``app.providers.pty.HelperPtyMixin``
        (a pty helper inside the sandbox over ``exec_stream``; needs ``python3`` there).
        """

    @abc.abstractmethod
    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Stream one file's bytes. Missing file → ``FileNotFoundError``."""

    @abc.abstractmethod
    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Write one file (parents created) from a byte stream."""

    @abc.abstractmethod
    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """Stream an uncompressed tar of directory ``path`` (entries relative to it)."""

    @abc.abstractmethod
    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        """Extract an uncompressed tar stream into directory ``path`` (created).

        ``data`` may also be ``LaneSplittable`` (a snapshot section). A provider whose
        ``capabilities.import_lanes`` is above 1 may then extract it as concurrent lanes
        (``lane_rounds``) instead of reading it; the others read it as one stream.
        Either way the stream is complete only once read (or split) to its end.
        """

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        """How the service reaches TCP ``port`` of a running sandbox (preview URLs; ``app.providers.ports``).

        Raises ``SandboxNotRunning`` for a stopped sandbox; a provider that cannot
        reach sandbox ports keeps this default (``PreviewUnsupported``, 501).
        """
        raise PreviewUnsupported(f"provider {self.name!r} cannot reach a sandbox port", provider=self.name)

    # -- native images (optional; ``capabilities.image_commit``) ---------------

    async def commit_image(self, ref: str, name: str) -> str:
        """Save the sandbox's filesystem as an image called ``name``; returns what ``create`` takes as image.

        The image keeps the base image's configuration (env, entry, labels):
        nothing of the sandbox's environment, which holds its secrets.
        Providers without native images keep the default, and repo images
        fall back to snapshot-format blobs.
        """
        raise UnsupportedSpec("image", self.name, "this provider cannot save a sandbox as an image")

    async def delete_image(self, image: str) -> bool:
        """Delete an image made by ``commit_image``; False if it did not exist."""
        raise UnsupportedSpec("image", self.name, "this provider cannot save a sandbox as an image")


async def _no_events() -> AsyncIterator[ExitEvent]:
    return
    yield  # an async generator that yields nothing
