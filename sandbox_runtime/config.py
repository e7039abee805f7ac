"""The runtime's view of its environment, parsed once and validated.

Both the supervisor and the bridge build a :class:`RuntimeConfig` from ``os.environ``;
the names and defaults come from :mod:`sandbox_runtime.contract`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from sandbox_runtime import contract as c
from sandbox_runtime.identity import GitIdentity


class ConfigError(ValueError):
    """The environment is missing a name or holds a malformed value."""


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class RestartSettings:
    """Restart policy knobs (see :class:`sandbox_runtime.restart.RestartPolicy`)."""

    backoff_base: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 1.0
    max_restarts: int = 5
    window: float = 600.0
    stable_after: float = 60.0


@dataclass(frozen=True)
class BridgeSettings:
    """Bridge timing and buffering knobs."""

    heartbeat_interval: float = 30.0
    resend_interval: float = 10.0
    reconnect_max_delay: float = 60.0
    max_disconnected: float = 3600.0
    buffer_max_events: int = 1000
    prompt_inactivity_timeout: float = 900.0


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the supervisor and bridge read from the environment."""

    sandbox_id: str
    control_plane_url: str
    auth_token: str
    repo_owner: str
    repo_name: str
    branch: str | None
    vcs_host: str
    clone_username: str
    clone_token: str
    clone_url_template: str
    clone_depth: int
    session: c.SessionConfig | None
    session_config_file: Path | None
    wait_for_session_timeout: float
    boot_mode: c.BootMode
    repo_image_sha: str | None
    env_server_argv: list[str]
    env_server_port: int
    health_path: str
    health_timeout: float
    liveness_interval: float
    workspace_dir: Path
    state_dir: Path
    run_dir: Path
    git_timeout: float
    setup_timeout: float
    start_timeout: float
    stop_grace: float
    restart: RestartSettings = field(default_factory=RestartSettings)
    bridge: BridgeSettings = field(default_factory=BridgeSettings)
    git_fallback_identity: GitIdentity = field(
        default_factory=lambda: GitIdentity.parse(c.DEFAULT_GIT_FALLBACK_IDENTITY)
    )

    @property
    def repo_dir(self) -> Path:
        """The checkout, ``WORKSPACE_DIR/REPO_NAME`` (the workspace itself when no repo is set)."""
        return self.workspace_dir / self.repo_name if self.repo_name else self.workspace_dir

    @property
    def clone_url(self) -> str:
        """The credential-free clone URL."""
        return self.clone_url_template.format(host=self.vcs_host, owner=self.repo_owner, name=self.repo_name)

    @property
    def env_server_url(self) -> str:
        """Base URL of the env server on loopback."""
        return f"http://127.0.0.1:{self.env_server_port}"

    @property
    def session_id_file(self) -> Path:
        """Where the bridge persists the env server session id it continues."""
        return self.state_dir / c.SESSION_ID_FILE

    @property
    def outbox_file(self) -> Path:
        """The bridge's durable event buffer."""
        return self.state_dir / c.OUTBOX_FILE

    @property
    def env_server_state_dir(self) -> Path:
        """XDG data/state root given to the env server, so its sessions are snapshotted."""
        return self.state_dir / c.ENV_SERVER_STATE_SUBDIR

    @property
    def session_env_file(self) -> Path:
        """The session's env vars for the agent's shells (see :mod:`sandbox_runtime.sessionenv`)."""
        return self.run_dir / c.SESSION_ENV_FILE

    @property
    def secrets(self) -> tuple[str, ...]:
        """Secret values to redact from every log line and error text."""
        return tuple(s for s in (self.auth_token, self.clone_token) if s)

    @property
    def effective_branch(self) -> str | None:
        """The session's branch, else ``REPO_BRANCH``, else None (remote default)."""
        if self.session and self.session.branch:
            return self.session.branch
        return self.branch

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuntimeConfig:
        """Parse and validate ``env``.

        Raises:
            ConfigError: a value is malformed or the template embeds credentials.
        """
        return _from_env(env)


def _from_env(env: Mapping[str, str]) -> RuntimeConfig:
    session: c.SessionConfig | None = None
    raw_session = env.get(c.SESSION_CONFIG, "").strip()
    if raw_session:
        try:
            session = c.SessionConfig.model_validate_json(raw_session)
        except ValidationError as exc:
            raise ConfigError(f"{c.SESSION_CONFIG} is invalid: {exc.errors(include_url=False)}") from None
    try:
        boot_mode = c.resolve_boot_mode(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    template = env.get(c.VCS_CLONE_URL_TEMPLATE) or c.DEFAULT_CLONE_URL_TEMPLATE
    if "@" in template.split("://", 1)[-1].split("/", 1)[0]:
        raise ConfigError(f"{c.VCS_CLONE_URL_TEMPLATE} must not embed credentials")
    port = _int(env, c.ENV_SERVER_PORT, c.DEFAULT_ENV_SERVER_PORT, 1)
    cmd = env.get(c.ENV_SERVER_CMD) or c.default_env_server_cmd(port)
    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        raise ConfigError(f"{c.ENV_SERVER_CMD} cannot be parsed: {exc}") from None
    if not argv:
        raise ConfigError(f"{c.ENV_SERVER_CMD} is empty")
    workspace = Path(env.get(c.WORKSPACE_DIR) or c.DEFAULT_WORKSPACE_DIR)
    state_dir = Path(env.get(c.RUNTIME_STATE_DIR) or c.default_state_dir(str(workspace)))
    claim_file = env.get(c.SESSION_CONFIG_FILE, "").strip()
    repo_owner = env.get(c.REPO_OWNER, "") or (session.repo_owner if session else "")
    repo_name = env.get(c.REPO_NAME, "") or (session.repo_name if session else "")
    if "/" in repo_name or repo_name in (".", ".."):
        raise ConfigError(f"{c.REPO_NAME}={repo_name!r} is not a plain directory name")
    try:
        identity = GitIdentity.parse(env.get(c.GIT_FALLBACK_IDENTITY) or c.DEFAULT_GIT_FALLBACK_IDENTITY)
    except ValueError as exc:
        raise ConfigError(f"{c.GIT_FALLBACK_IDENTITY}: {exc}") from None
    return RuntimeConfig(
        sandbox_id=env.get(c.SANDBOX_ID, ""),
        control_plane_url=env.get(c.CONTROL_PLANE_URL, "").rstrip("/"),
        auth_token=env.get(c.SANDBOX_AUTH_TOKEN, ""),
        repo_owner=repo_owner,
        repo_name=repo_name,
        branch=env.get(c.REPO_BRANCH) or None,
        vcs_host=env.get(c.VCS_HOST) or c.DEFAULT_VCS_HOST,
        clone_username=env.get(c.VCS_CLONE_USERNAME) or c.DEFAULT_VCS_CLONE_USERNAME,
        clone_token=env.get(c.VCS_CLONE_TOKEN, ""),
        clone_url_template=template,
        clone_depth=_int(env, c.GIT_CLONE_DEPTH, c.DEFAULT_CLONE_DEPTH),
        session=session,
        session_config_file=Path(claim_file) if claim_file else None,
        wait_for_session_timeout=_float(env, c.WAIT_FOR_SESSION_TIMEOUT, 86400.0, 1.0),
        boot_mode=boot_mode,
        repo_image_sha=env.get(c.REPO_IMAGE_SHA) or None,
        env_server_argv=argv,
        env_server_port=port,
        health_path=env.get(c.ENV_SERVER_HEALTH_PATH) or c.DEFAULT_HEALTH_PATH,
        health_timeout=_float(env, c.ENV_SERVER_HEALTH_TIMEOUT, 120.0, 0.1),
        liveness_interval=_float(env, c.ENV_SERVER_LIVENESS_INTERVAL, 15.0),
        workspace_dir=workspace,
        state_dir=state_dir,
        run_dir=Path(env.get(c.RUNTIME_RUN_DIR) or c.DEFAULT_RUN_DIR),
        git_timeout=_float(env, c.GIT_TIMEOUT, 300.0, 1.0),
        setup_timeout=_float(env, c.SETUP_TIMEOUT, 900.0, 1.0),
        start_timeout=_float(env, c.START_TIMEOUT, 120.0, 1.0),
        stop_grace=_float(env, c.STOP_GRACE_SECONDS, 10.0),
        restart=RestartSettings(
            backoff_base=_float(env, c.RESTART_BACKOFF_BASE, 0.5),
            backoff_max=_float(env, c.RESTART_BACKOFF_MAX, 60.0),
            jitter=_float(env, c.RESTART_JITTER, 0.25),
            max_restarts=_int(env, c.RESTART_MAX, 5),
            window=_float(env, c.RESTART_WINDOW, 600.0, 1.0),
            stable_after=_float(env, c.RESTART_STABLE_AFTER, 60.0),
        ),
        bridge=BridgeSettings(
            heartbeat_interval=_float(env, c.BRIDGE_HEARTBEAT_INTERVAL, 30.0, 0.05),
            resend_interval=_float(env, c.BRIDGE_RESEND_INTERVAL, 10.0, 0.05),
            reconnect_max_delay=_float(env, c.BRIDGE_RECONNECT_MAX_DELAY, 60.0, 0.05),
            max_disconnected=_float(env, c.BRIDGE_MAX_DISCONNECTED, 3600.0, 1.0),
            buffer_max_events=_int(env, c.BRIDGE_BUFFER_MAX_EVENTS, 1000, 1),
            prompt_inactivity_timeout=_float(env, c.BRIDGE_PROMPT_INACTIVITY_TIMEOUT, 900.0, 1.0),
        ),
        git_fallback_identity=identity,
    )
