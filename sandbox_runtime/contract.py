"""The env contract between the control service and the in-sandbox runtime.

This module is the single source of truth both sides import: the service calls
:func:`sandbox_runtime.sandbox_env.build_sandbox_env` to produce a sandbox's
environment from these names and refuses user env vars that would shadow them;
the runtime reads the same names back. It depends on the standard library and
pydantic only, so importing it from ``app`` pulls in nothing else.

Process layout inside a sandbox (all paths configurable through the names below)::

    WORKSPACE_DIR/                      /workspace (snapshotted)
      <REPO_NAME>/                      the repository; the env server's cwd
      .sandbox-runtime/                 RUNTIME_STATE_DIR (snapshotted with the workspace)
        opencode-session-id             the env server session the bridge continues
        outbox.jsonl                    the bridge's durable event buffer
        inflight-prompt.json            marker of a prompt being executed
        env-server/data, env-server/state   XDG_DATA_HOME / XDG_STATE_HOME of the env server
          (data/opencode/auth.json: provider keys of a claim; see SNAPSHOT_EXCLUDED_STATE_FILES)
    RUNTIME_RUN_DIR/                    /tmp/sandbox-runtime (ephemeral, never snapshotted)
      supervisor.pid env-server.pid bridge.pid   pids (= process group ids of the children)
      hooks/setup.log hooks/start.log            full hook output (the tail is also logged)
      env-server-auth                   the env server's password (0600, made at every start)
      session.env                       the session's env vars for the agent's shells (0600)

Build mode prints exactly one result line to stdout, parsed by
:func:`parse_build_result`::

    SANDBOX_BUILD_COMPLETE {"head_sha": "<40 hex>", "branch": "main", "duration_seconds": 12.3}
    SANDBOX_BUILD_FAILED {"error": "<tail of the failing step's output>"}
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

# The build result line is part of the contract; it lives in its own module for size.
from sandbox_runtime.build_result import BUILD_COMPLETE_MARKER as BUILD_COMPLETE_MARKER
from sandbox_runtime.build_result import BUILD_FAILED_MARKER as BUILD_FAILED_MARKER
from sandbox_runtime.build_result import BuildResult as BuildResult
from sandbox_runtime.build_result import format_build_line as format_build_line
from sandbox_runtime.build_result import parse_build_result as parse_build_result

# --- Identity and control plane -------------------------------------------------------------

SANDBOX_ID = "SANDBOX_ID"
"""The control plane's logical sandbox id; sent as ``X-Sandbox-ID`` and in every event."""
CONTROL_PLANE_URL = "CONTROL_PLANE_URL"
"""Base URL of the control plane (http/https); the bridge derives ws/wss from it."""
SANDBOX_AUTH_TOKEN = "SANDBOX_AUTH_TOKEN"
"""Bearer token for the bridge handshake and the fatal-error report. Secret."""

# --- Repository -----------------------------------------------------------------------------

REPO_OWNER = "REPO_OWNER"
"""Repository owner (organisation or user)."""
REPO_NAME = "REPO_NAME"
"""Repository name; the checkout lives at ``WORKSPACE_DIR/REPO_NAME``."""
REPO_BRANCH = "REPO_BRANCH"
"""Branch to check out when no session config names one (builds, warm pools); else the remote default."""
VCS_HOST = "VCS_HOST"
"""Git host name, e.g. ``github.com`` or a GitHub Enterprise host."""
VCS_CLONE_USERNAME = "VCS_CLONE_USERNAME"
"""User name the credential helper answers (``x-access-token`` for GitHub App tokens)."""
VCS_CLONE_TOKEN = "VCS_CLONE_TOKEN"
"""Password/token the credential helper answers. Secret: never in argv, .git/config or a snapshot."""
VCS_CLONE_URL_TEMPLATE = "VCS_CLONE_URL_TEMPLATE"
"""Clone URL template with ``{host}``, ``{owner}``, ``{name}``; must not embed credentials."""
GIT_CLONE_DEPTH = "GIT_CLONE_DEPTH"
"""History depth for clone and fetch (``0`` = full history)."""
GIT_FALLBACK_IDENTITY = "GIT_FALLBACK_IDENTITY"
"""Commit identity ``Name <email>`` in the repository's git config until a prompt names its author."""

# --- Session and boot -----------------------------------------------------------------------

SESSION_CONFIG = "SESSION_CONFIG"
"""JSON of :class:`SessionConfig`."""
SESSION_CONFIG_FILE = "SESSION_CONFIG_FILE"
"""Warm-pool mode: set without SESSION_CONFIG, boot the repo, then wait for this :class:`SessionClaim` file."""
WAIT_FOR_SESSION_TIMEOUT = "WAIT_FOR_SESSION_TIMEOUT"
"""Seconds a warm sandbox waits for its claim file before exiting non-zero."""
BOOT_MODE = "BOOT_MODE"
"""One of :class:`BootMode`; wins over the legacy flags below."""
RESTORED_FROM_SNAPSHOT = "RESTORED_FROM_SNAPSHOT"
"""Legacy flag: truthy means ``snapshot_restore``."""
FROM_REPO_IMAGE = "FROM_REPO_IMAGE"
"""Legacy flag: truthy means ``repo_image``."""
REPO_IMAGE_SHA = "REPO_IMAGE_SHA"
"""Commit the repo image was built at (informational; logged against the fetched head)."""
IMAGE_BUILD_MODE = "IMAGE_BUILD_MODE"
"""Legacy flag: truthy means ``build``."""

# --- Env server -----------------------------------------------------------------------------

ENV_SERVER_CMD = "ENV_SERVER_CMD"
"""Command line of the env server (shlex-split, no shell)."""
ENV_SERVER_PORT = "ENV_SERVER_PORT"
"""Port the env server listens on at 127.0.0.1."""
ENV_SERVER_HEALTH_PATH = "ENV_SERVER_HEALTH_PATH"
"""Path answered with 200 once the env server is ready."""
ENV_SERVER_HEALTH_TIMEOUT = "ENV_SERVER_HEALTH_TIMEOUT"
"""Seconds the env server may take to become healthy before it counts as crashed."""
ENV_SERVER_LIVENESS_INTERVAL = "ENV_SERVER_LIVENESS_INTERVAL"
"""Seconds between health probes of a running env server (0 disables); 3 misses in a row restart it."""

# --- Runtime layout and tuning ----------------------------------------------------------------

WORKSPACE_DIR = "WORKSPACE_DIR"
"""Workspace root (snapshotted)."""
RUNTIME_STATE_DIR = "RUNTIME_STATE_DIR"
"""Durable runtime state: session id, event buffer, env server data (snapshotted)."""
RUNTIME_RUN_DIR = "RUNTIME_RUN_DIR"
"""Ephemeral runtime files (pid files); never snapshotted."""
GIT_TIMEOUT = "GIT_TIMEOUT"
"""Seconds any single git command may run."""
SETUP_TIMEOUT = "SETUP_TIMEOUT"
"""Seconds ``.openinspect/setup.sh`` may run."""
START_TIMEOUT = "START_TIMEOUT"
"""Seconds ``.openinspect/start.sh`` may run."""
STOP_GRACE_SECONDS = "STOP_GRACE_SECONDS"
"""Grace period between SIGTERM and SIGKILL for each child process group."""
RESTART_BACKOFF_BASE = "RESTART_BACKOFF_BASE"
"""Backoff base in seconds: delay = min(base * 2**n, RESTART_BACKOFF_MAX) + jitter."""
RESTART_BACKOFF_MAX = "RESTART_BACKOFF_MAX"
"""Backoff cap in seconds."""
RESTART_JITTER = "RESTART_JITTER"
"""Upper bound of the uniform random jitter added to each backoff, in seconds."""
RESTART_MAX = "RESTART_MAX"
"""Restarts allowed per child within RESTART_WINDOW before the fatal report."""
RESTART_WINDOW = "RESTART_WINDOW"
"""Sliding window for RESTART_MAX, in seconds."""
RESTART_STABLE_AFTER = "RESTART_STABLE_AFTER"
"""Seconds of healthy running after which the backoff exponent resets."""
BRIDGE_HEARTBEAT_INTERVAL = "BRIDGE_HEARTBEAT_INTERVAL"
"""Seconds between heartbeats."""
BRIDGE_RESEND_INTERVAL = "BRIDGE_RESEND_INTERVAL"
"""Seconds before an unacknowledged critical event is re-sent on the same connection."""
BRIDGE_RECONNECT_MAX_DELAY = "BRIDGE_RECONNECT_MAX_DELAY"
"""Cap of the bridge's reconnect backoff, in seconds."""
BRIDGE_MAX_DISCONNECTED = "BRIDGE_MAX_DISCONNECTED"
"""Seconds without a control-plane connection after which the bridge ends the session."""
BRIDGE_BUFFER_MAX_EVENTS = "BRIDGE_BUFFER_MAX_EVENTS"
"""Bound of the durable event buffer (oldest non-critical events are dropped first)."""
BRIDGE_PROMPT_INACTIVITY_TIMEOUT = "BRIDGE_PROMPT_INACTIVITY_TIMEOUT"
"""Seconds without any env server event during a prompt before it is aborted as failed."""

DEFAULT_ENV_SERVER_PORT = 4096
DEFAULT_ENV_SERVER_CMD = f"opencode serve --port {DEFAULT_ENV_SERVER_PORT} --hostname 127.0.0.1"


def default_env_server_cmd(port: int = DEFAULT_ENV_SERVER_PORT) -> str:
    """OpenCode on ``port`` of the sandbox's loopback (the default when ``ENV_SERVER_CMD`` is unset)."""
    return f"opencode serve --port {port} --hostname 127.0.0.1"


DEFAULT_HEALTH_PATH = "/global/health"
DEFAULT_VCS_HOST = "github.com"
DEFAULT_VCS_CLONE_USERNAME = "x-access-token"
DEFAULT_CLONE_URL_TEMPLATE = "https://{host}/{owner}/{name}.git"
DEFAULT_WORKSPACE_DIR = "/workspace"
DEFAULT_STATE_DIR_NAME = ".sandbox-runtime"
DEFAULT_RUN_DIR = "/tmp/sandbox-runtime"
DEFAULT_CLONE_DEPTH = 100
DEFAULT_GIT_FALLBACK_IDENTITY = "OpenInspect <open-inspect@noreply.github.com>"
DEFAULT_PROVIDER = "anthropic"
DEFAULT_MODEL = "claude-sonnet-4-6"

SESSION_ID_FILE = "opencode-session-id"
"""File name (in RUNTIME_STATE_DIR) holding the env server session id the bridge continues."""
OUTBOX_FILE = "outbox.jsonl"
"""File name (in RUNTIME_STATE_DIR) of the bridge's durable event buffer."""
ENV_SERVER_STATE_SUBDIR = "env-server"
"""Sub-directory of RUNTIME_STATE_DIR holding the env server's XDG data and state dirs."""
ENV_SERVER_AUTH_FILE = "env-server-auth"
"""File name (in RUNTIME_RUN_DIR, 0600) of the env server's password, made at every start; never leaves the sandbox."""
ENV_SERVER_USERNAME = "opencode"
"""Basic-auth user name of the env server (OpenCode's ``OPENCODE_SERVER_USERNAME``)."""
SESSION_ENV_FILE = "session.env"
"""File name (in RUNTIME_RUN_DIR, 0600): a claim's env vars as a shell script the agent's shells load."""
SNAPSHOT_EXCLUDED_STATE_FILES = ("env-server/data/opencode/auth.json", "env-server/data/opencode/mcp-auth.json")
"""Files under RUNTIME_STATE_DIR holding credentials (provider keys handed over at a claim): never snapshotted."""
CLAIM_WAITING_FILE = "claim-waiting"
"""File name (in RUNTIME_RUN_DIR) present while a warm sandbox has booted (clone, setup.sh) and
waits for its claim; the service polls it to count the sandbox as ready. The env server starts
at the same moment and is usually healthy a few seconds later."""
DEFAULT_CLAIM_FILE = f"{DEFAULT_RUN_DIR}/claim.json"
"""Where the service asks warm sandboxes (``SESSION_CONFIG_FILE``) to expect their claim."""

EXIT_OK = 0
"""Session over (bridge exit 0, shutdown command, SIGTERM) or build complete."""
EXIT_FATAL = 1
"""Boot failed, build failed or a child exceeded its restart budget (reported when possible)."""
EXIT_CONFIG = 2
"""The environment is invalid (missing or malformed names)."""

RUNTIME_PYTHONPATH = "SANDBOX_RUNTIME_PYTHONPATH"
"""The import path a provider added for the runtime itself (e.g. the local provider's
bind mounts); when ``PYTHONPATH`` equals it, children of the runtime do not inherit it."""

SECRET_ENV_NAMES = frozenset({SANDBOX_AUTH_TOKEN, VCS_CLONE_TOKEN})
"""Names whose values are redacted from logs and withheld from the env server and hooks."""

RESERVED_ENV_NAMES = frozenset(
    {
        SANDBOX_ID, CONTROL_PLANE_URL, SANDBOX_AUTH_TOKEN,
        REPO_OWNER, REPO_NAME, REPO_BRANCH, VCS_HOST, VCS_CLONE_USERNAME, VCS_CLONE_TOKEN,
        VCS_CLONE_URL_TEMPLATE, GIT_CLONE_DEPTH, GIT_FALLBACK_IDENTITY,
        SESSION_CONFIG, SESSION_CONFIG_FILE, WAIT_FOR_SESSION_TIMEOUT,
        BOOT_MODE, RESTORED_FROM_SNAPSHOT, FROM_REPO_IMAGE, REPO_IMAGE_SHA, IMAGE_BUILD_MODE,
        ENV_SERVER_CMD, ENV_SERVER_PORT, ENV_SERVER_HEALTH_PATH, ENV_SERVER_HEALTH_TIMEOUT,
        ENV_SERVER_LIVENESS_INTERVAL,
        WORKSPACE_DIR, RUNTIME_STATE_DIR, RUNTIME_RUN_DIR, RUNTIME_PYTHONPATH,
        GIT_TIMEOUT, SETUP_TIMEOUT, START_TIMEOUT, STOP_GRACE_SECONDS,
        RESTART_BACKOFF_BASE, RESTART_BACKOFF_MAX, RESTART_JITTER, RESTART_MAX, RESTART_WINDOW,
        RESTART_STABLE_AFTER,
        BRIDGE_HEARTBEAT_INTERVAL, BRIDGE_RESEND_INTERVAL, BRIDGE_RECONNECT_MAX_DELAY,
        BRIDGE_MAX_DISCONNECTED, BRIDGE_BUFFER_MAX_EVENTS, BRIDGE_PROMPT_INACTIVITY_TIMEOUT,
    }
)  # fmt: skip
"""Every name the runtime reads; user env vars may not set any of them."""

_TRUTHY = frozenset({"1", "true", "yes", "on"})


def is_truthy(value: str | None) -> bool:
    """Interpret an env flag the way the legacy runtimes do (``1/true/yes/on``, case-insensitive)."""
    return value is not None and value.strip().lower() in _TRUTHY


class BootMode(enum.StrEnum):
    """How the supervisor prepares the repository."""

    FRESH = "fresh"
    """Clone the repository (depth-limited), run setup.sh and start.sh."""
    SNAPSHOT_RESTORE = "snapshot_restore"
    """The workspace came from a snapshot: fetch only (uncommitted work survives), run start.sh."""
    REPO_IMAGE = "repo_image"
    """The repo exists from a build: fetch and reset to the branch head, run start.sh."""
    BUILD = "build"
    """Clone, run setup.sh (fatal on failure), print the completion line, exit."""


def resolve_boot_mode(env: Mapping[str, str]) -> BootMode:
    """Resolve the boot mode from ``BOOT_MODE`` or, when absent, the legacy flags.

    Legacy precedence: build, then snapshot restore (a snapshot of a repo-image sandbox
    carries both flags and must not be reset), then repo image.

    Raises:
        ValueError: ``BOOT_MODE`` holds an unknown value.
    """
    explicit = env.get(BOOT_MODE, "").strip()
    if explicit:
        try:
            return BootMode(explicit.lower())
        except ValueError:
            allowed = "|".join(mode.value for mode in BootMode)
            raise ValueError(f"{BOOT_MODE}={explicit!r} is not one of {allowed}") from None
    if is_truthy(env.get(IMAGE_BUILD_MODE)):
        return BootMode.BUILD
    if is_truthy(env.get(RESTORED_FROM_SNAPSHOT)):
        return BootMode.SNAPSHOT_RESTORE
    if is_truthy(env.get(FROM_REPO_IMAGE)):
        return BootMode.REPO_IMAGE
    return BootMode.FRESH


#: A commit named by its (possibly abbreviated) hex sha: SHA-1 or SHA-256 object names.
COMMIT_SHA_PATTERN = r"^[0-9a-f]{7,64}$"


class SessionConfig(BaseModel):
    """The session a sandbox serves; travels as JSON in ``SESSION_CONFIG``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str = Field(min_length=1, description="Control plane session id; part of the bridge URL.")
    repo_owner: str = Field(min_length=1)
    repo_name: str = Field(min_length=1)
    branch: str | None = Field(default=None, description="Branch to work on; None = the remote default.")
    provider: str = Field(default=DEFAULT_PROVIDER, description="LLM provider id the env server uses.")
    model: str = Field(default=DEFAULT_MODEL, description="Model id at that provider.")
    opencode_session_id: str | None = Field(default=None, description="Env server session to continue.")
    base_sha: str | None = Field(
        default=None,
        pattern=COMMIT_SHA_PATTERN,
        description="Commit the session starts from: the branch is set to it after the clone (not on a restore).",
    )


class SessionClaim(BaseModel):
    """Content of ``SESSION_CONFIG_FILE`` written by the service when it claims a warm sandbox.

    ``env`` carries what the warm sandbox could not know at boot (``CONTROL_PLANE_URL``,
    ``SANDBOX_AUTH_TOKEN``, a fresh ``VCS_CLONE_TOKEN``, ``SANDBOX_ID``, user env vars); it is
    merged over the supervisor's environment. User env vars reach the running env server through
    :data:`SESSION_ENV_FILE` and its auth API (see ``sandbox_runtime.sessionenv``). Write the file atomically
    (temp file + rename); the runtime deletes it once read because it holds secrets.
    """

    model_config = ConfigDict(extra="forbid")

    session_config: SessionConfig
    env: dict[str, str] = Field(default_factory=dict)


def default_state_dir(workspace_dir: str) -> str:
    """``RUNTIME_STATE_DIR`` when unset: inside the workspace so one snapshot path covers both."""
    return str(PurePosixPath(workspace_dir) / DEFAULT_STATE_DIR_NAME)


def snapshot_paths(env: Mapping[str, str]) -> list[str]:
    """Absolute paths a snapshot must cover for ``env`` (deduplicated, parents first).

    With the defaults this is just the workspace, because the state dir lives inside it.
    """
    workspace = env.get(WORKSPACE_DIR) or DEFAULT_WORKSPACE_DIR
    state = env.get(RUNTIME_STATE_DIR) or default_state_dir(workspace)
    paths = [workspace]
    if not PurePosixPath(state).is_relative_to(workspace):
        paths.append(state)
    return paths
