"""Service configuration from the environment, validated once at start.

``Settings.load()`` is the only place the environment is read; everything
else receives the ``Settings`` object, or the part of it that it needs. A bad
value stops the service with a message that names the variable.

``Settings`` holds the core knobs and one sub-config per provider
(``settings.local``, ``settings.docker``, ``settings.daytona``,
``settings.modal``): each is handed to its provider alone, and each reads its
own environment variables, under the same names as ever (they live in
``app.provider_settings``).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from app.provider_settings import (
    DaytonaSettings,
    DockerSettings,
    KubernetesSettings,
    LocalSettings,
    ModalSettings,
    split_csv,
)
from app.secret_file import SECRET_FILE_NAME, read_secret_file

#: Minimum length of an API secret, in bytes.
MIN_SECRET_BYTES = 32
_PLACEHOLDERS = {"changeme", "change-me", "secret", "your-secret-here", "replace-me", "xxx"}


class ConfigError(Exception):
    """The configuration cannot work; raised before anything starts."""


def _is_sub_config(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings)


class _CoreEnvSource(EnvSettingsSource):
    """The environment for ``Settings`` minus its sub-configs, which read their own variables.

    Without this, a variable that happens to be called ``LOCAL`` or ``DOCKER`` would be
    parsed as a whole sub-config.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if _is_sub_config(field):
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    """Every knob of the service; environment names in ``validation_alias``."""

    # An empty ``NAME=`` line in an .env file means "unset", not "invalid"; a keyword
    # given to ``load`` that names no setting is a mistake, not something to drop.
    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True, env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _CoreEnvSource(settings_cls), dotenv_settings, file_secret_settings

    provider: str = Field(default="local", validation_alias="SANDBOX_PROVIDER")
    #: Shared HMAC secrets, comma separated; the first signs, all verify.
    api_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias=AliasChoices("SANDBOX_API_SECRET", "DAYTONA_API_SECRET", "MODAL_API_SECRET"),
    )
    auth_mode: Literal["token", "signed"] = Field(default="token", validation_alias="SANDBOX_AUTH_MODE")
    #: Accepted clock skew for bearer tokens and signatures, seconds.
    auth_skew_seconds: int = Field(default=300, ge=5, le=3600, validation_alias="SANDBOX_AUTH_SKEW_SECONDS")
    data_dir: Path = Field(default=Path(".sandbox-control"), validation_alias="SANDBOX_DATA_DIR")
    #: SQLAlchemy async URL; default ``sqlite+aiosqlite:///<data_dir>/state.db``.
    state_url: str | None = Field(default=None, validation_alias="SANDBOX_STATE_URL")
    host: str = Field(default="127.0.0.1", validation_alias="SANDBOX_HOST")
    port: int = Field(default=8080, ge=1, le=65535, validation_alias="SANDBOX_PORT")
    log_level: str = Field(default="info", validation_alias="SANDBOX_LOG_LEVEL")
    #: Turn on asyncio debug mode and log every callback slower than this (ms);
    #: used by the benchmarks to prove the event loop never blocks.
    loop_debug_slow_ms: int | None = Field(default=None, ge=1, validation_alias="SANDBOX_LOOP_DEBUG_SLOW_MS")

    # Blob store: S3 when a bucket is set, else a directory under data_dir.
    s3_endpoint: str | None = Field(default=None, validation_alias="S3_ENDPOINT")
    s3_bucket: str | None = Field(default=None, validation_alias="S3_BUCKET")
    s3_access_key: SecretStr | None = Field(default=None, validation_alias="S3_ACCESS_KEY")
    s3_secret_key: SecretStr | None = Field(default=None, validation_alias="S3_SECRET_KEY")
    s3_region: str = Field(default="us-east-1", validation_alias="S3_REGION")
    s3_path_style: bool = Field(default=True, validation_alias="S3_PATH_STYLE")
    s3_create_bucket: bool = Field(default=True, validation_alias="S3_CREATE_BUCKET")

    # Snapshots.
    #: Directories captured by a snapshot. The runtime keeps the env server's
    #: state under /workspace/.sandbox-runtime, so the default covers both.
    snapshot_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/workspace"], validation_alias="SANDBOX_SNAPSHOT_PATHS"
    )
    #: Snapshots and restores running at once on this instance (protects the host).
    snapshot_concurrency: int = Field(default=4, ge=1, le=64, validation_alias="SANDBOX_SNAPSHOT_CONCURRENCY")
    #: Keep symlinks pointing outside the snapshot paths (e.g. a venv's python -> /usr/bin).
    #: They are stored as links only; nothing is ever written through them on restore.
    snapshot_keep_external_symlinks: bool = Field(default=True, validation_alias="SANDBOX_SNAPSHOT_EXTERNAL_SYMLINKS")
    #: Archive format of new snapshots: ``v2`` (deduplicated chunks) or ``v1`` (one blob).
    #: Both are always readable.
    snapshot_format: Literal["v1", "v2"] = Field(default="v2", validation_alias="SANDBOX_SNAPSHOT_FORMAT")
    #: Chunks one v2 snapshot stores (or one restore fetches) at once.
    snapshot_chunk_concurrency: int = Field(
        default=4, ge=1, le=32, validation_alias="SANDBOX_SNAPSHOT_CHUNK_CONCURRENCY"
    )
    #: An unreferenced chunk is deleted only once no writer has relied on it for this long.
    #: Must exceed the longest snapshot write (a writer re-marks its chunks before committing).
    snapshot_gc_grace_seconds: float = Field(default=6 * 3600.0, ge=0, validation_alias="SANDBOX_SNAPSHOT_GC_GRACE")
    #: How often the (leased) chunk garbage collection runs.
    snapshot_gc_interval_seconds: float = Field(default=3600.0, gt=0, validation_alias="SANDBOX_SNAPSHOT_GC_INTERVAL")

    instance_scope_override: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", validation_alias="SANDBOX_INSTANCE_SCOPE"
    )
    base_image: str | None = Field(default=None, validation_alias="SANDBOX_BASE_IMAGE")
    allowed_control_plane_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="ALLOWED_CONTROL_PLANE_HOSTS"
    )
    internal_callback_secret: SecretStr | None = Field(default=None, validation_alias="INTERNAL_CALLBACK_SECRET")
    #: Bearer keys of the Daytona-compatible API (``/daytona/...``), comma separated, 32+ bytes each.
    #: None configured: that API is closed (every request 401). They open nothing else.
    daytona_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias="SANDBOX_DAYTONA_API_KEYS"
    )

    # Limits of the API.
    max_json_body_bytes: int = Field(default=1 << 20, ge=1024, validation_alias="SANDBOX_MAX_JSON_BODY_BYTES")
    max_upload_bytes: int = Field(default=1 << 30, ge=1024, validation_alias="SANDBOX_MAX_UPLOAD_BYTES")
    exec_max_output_bytes: int = Field(default=1 << 20, ge=1024, validation_alias="SANDBOX_EXEC_MAX_OUTPUT_BYTES")
    exec_default_timeout: float = Field(default=60.0, gt=0, validation_alias="SANDBOX_EXEC_DEFAULT_TIMEOUT")
    exec_max_timeout: float = Field(default=3600.0, gt=0, validation_alias="SANDBOX_EXEC_MAX_TIMEOUT")
    #: Bytes of each stream a background process keeps in its log file in the sandbox (the rest is dropped).
    process_log_max_bytes: int = Field(default=64 << 20, ge=1024, validation_alias="SANDBOX_PROCESS_LOG_MAX_BYTES")
    #: Longest life of a background process held by an exec (providers without detached processes),
    #: and of one log follow.
    process_max_seconds: float = Field(default=86400.0, gt=0, validation_alias="SANDBOX_PROCESS_MAX_SECONDS")
    default_ttl_seconds: int | None = Field(default=None, ge=1, validation_alias="SANDBOX_DEFAULT_TTL_SECONDS")
    max_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, validation_alias="SANDBOX_MAX_TTL_SECONDS")
    reaper_interval_seconds: float = Field(default=15.0, gt=0, validation_alias="SANDBOX_REAPER_INTERVAL")
    reconcile_interval_seconds: float = Field(default=60.0, gt=0, validation_alias="SANDBOX_RECONCILE_INTERVAL")
    #: Warm pools: seconds between maintenance passes (a PUT or a claim also wakes it at once).
    pool_interval_seconds: float = Field(default=10.0, gt=0, validation_alias="SANDBOX_POOL_INTERVAL")
    #: Pool members created at once, across all pools (bounds the load a refill puts on the provider).
    pool_create_concurrency: int = Field(default=4, ge=1, le=64, validation_alias="SANDBOX_POOL_CREATE_CONCURRENCY")
    #: Seconds a new member may take to clone and run setup.sh before it is replaced.
    pool_boot_timeout_seconds: float = Field(default=900.0, gt=0, validation_alias="SANDBOX_POOL_BOOT_TIMEOUT")
    #: max_age_seconds of the implicit pools made by POST /api/warm-sandbox.
    pool_default_max_age_seconds: int = Field(default=3600, ge=1, validation_alias="SANDBOX_POOL_DEFAULT_MAX_AGE")

    # Replicas: several service processes on one state store and one bucket.
    #: This replica's id in logs, metrics, /readyz and leases (default: <host>-<pid>-<random>).
    replica_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", validation_alias="SANDBOX_REPLICA_ID"
    )
    #: Lifetime of a lease on background work; renewed at a third of it. A dead replica's work
    #: is taken over within one lifetime.
    lease_ttl_seconds: float = Field(default=30.0, ge=2, le=3600, validation_alias="SANDBOX_LEASE_TTL")
    #: Reconciliation leaves records and provider objects younger than this alone (a create in
    #: flight on another replica), and ``creating`` records of a live replica at any age.
    reconcile_grace_seconds: float = Field(default=60.0, ge=0, validation_alias="SANDBOX_RECONCILE_GRACE")
    #: TTL given to a sandbox adopted after an interrupted create, when no default TTL is set:
    #: nobody may know it exists, so it must not run forever.
    adopted_ttl_seconds: int = Field(default=3600, ge=60, validation_alias="SANDBOX_ADOPTED_TTL")

    # Preview URLs (``/v1/sandboxes/{id}/previews``).
    #: Wildcard DNS domain of host-form previews (``{port}-{preview}.<domain>``); unset: path form only.
    preview_domain: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([a-z0-9.-]{0,200}[a-z0-9])?$", validation_alias="SANDBOX_PREVIEW_DOMAIN"
    )
    #: The service's public base URL (``https://sandboxes.example.com``) for preview URLs; unset: the
    #: request's own. Its scheme is also that of host-form URLs.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+$", validation_alias="SANDBOX_PUBLIC_URL")
    preview_default_ttl_seconds: int = Field(default=3600, ge=60, validation_alias="SANDBOX_PREVIEW_DEFAULT_TTL")
    preview_max_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, validation_alias="SANDBOX_PREVIEW_MAX_TTL")
    #: Mark the host-form preview cookie ``Secure`` (turn off only for plain-http development domains).
    preview_cookie_secure: bool = Field(default=True, validation_alias="SANDBOX_PREVIEW_COOKIE_SECURE")

    # One sub-config per provider; each is handed to its provider only.
    local: LocalSettings = Field(default_factory=LocalSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    daytona: DaytonaSettings = Field(default_factory=DaytonaSettings)
    modal: ModalSettings = Field(default_factory=ModalSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    # Session sandboxes (the in-sandbox runtime).
    vcs_host: str | None = Field(default=None, validation_alias="VCS_HOST")
    #: Clone URL template, e.g. ``https://{host}/{owner}/{name}.git`` (tests serve a local repo).
    vcs_clone_url_template: str | None = Field(default=None, validation_alias="VCS_CLONE_URL_TEMPLATE")
    #: The env server command inside sandboxes (default: OpenCode on port 4096).
    env_server_cmd: str | None = Field(default=None, validation_alias="SANDBOX_ENV_SERVER_CMD")
    #: A static clone/push token (e.g. a personal access token) used when no GitHub App is configured.
    vcs_clone_token: SecretStr | None = Field(default=None, validation_alias="SANDBOX_VCS_CLONE_TOKEN")
    github_app_id: str | None = Field(default=None, validation_alias="GITHUB_APP_ID")
    github_app_private_key: SecretStr | None = Field(default=None, validation_alias="GITHUB_APP_PRIVATE_KEY")
    github_app_private_key_file: Path | None = Field(default=None, validation_alias="GITHUB_APP_PRIVATE_KEY_FILE")
    github_app_installation_id: str | None = Field(default=None, validation_alias="GITHUB_APP_INSTALLATION_ID")
    github_hostname: str | None = Field(default=None, validation_alias="GITHUB_HOSTNAME")
    #: Override of the GitHub API base URL (GitHub Enterprise proxies, tests).
    github_api_base: str | None = Field(default=None, validation_alias="GITHUB_API_BASE")

    # Build callbacks (outbox delivery).
    callback_deadline_seconds: int = Field(default=24 * 3600, ge=60, validation_alias="SANDBOX_CALLBACK_DEADLINE")
    callback_retry_base_seconds: float = Field(default=2.0, gt=0, validation_alias="SANDBOX_CALLBACK_RETRY_BASE")
    callback_retry_cap_seconds: float = Field(default=300.0, gt=0, validation_alias="SANDBOX_CALLBACK_RETRY_CAP")
    callback_poll_interval_seconds: float = Field(default=5.0, gt=0, validation_alias="SANDBOX_CALLBACK_POLL_INTERVAL")
    callback_lease_seconds: float = Field(default=60.0, gt=0, validation_alias="SANDBOX_CALLBACK_LEASE")
    callback_request_timeout_seconds: float = Field(
        default=10.0, gt=0, validation_alias="SANDBOX_CALLBACK_REQUEST_TIMEOUT"
    )

    # Repo image builds.
    #: Longest a build may run (clone + setup.sh) before it is failed and its sandbox deleted.
    build_timeout_seconds: int = Field(default=1800, ge=10, le=24 * 3600, validation_alias="SANDBOX_BUILD_TIMEOUT")
    #: Builds running at once; more wait in the queue (persisted, so a restart keeps them).
    build_concurrency: int = Field(default=2, ge=1, le=64, validation_alias="SANDBOX_BUILD_CONCURRENCY")
    #: Log bytes kept per build; beyond that the log is cut (the result line is still read).
    build_log_max_bytes: int = Field(default=4 << 20, ge=64 << 10, validation_alias="SANDBOX_BUILD_LOG_MAX_BYTES")
    #: How often a running build's log and exit status are read from its sandbox.
    build_poll_seconds: float = Field(default=0.5, gt=0, le=30, validation_alias="SANDBOX_BUILD_POLL_INTERVAL")

    @field_validator("api_secrets", "allowed_control_plane_hosts", "snapshot_paths", "daytona_api_keys", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.exec_default_timeout > self.exec_max_timeout:
            raise ValueError("SANDBOX_EXEC_DEFAULT_TIMEOUT exceeds SANDBOX_EXEC_MAX_TIMEOUT")
        if self.preview_default_ttl_seconds > self.preview_max_ttl_seconds:
            raise ValueError("SANDBOX_PREVIEW_DEFAULT_TTL exceeds SANDBOX_PREVIEW_MAX_TTL")
        for key in self.daytona_api_keys:
            value = key.get_secret_value()
            if value.lower() in _PLACEHOLDERS or len(value.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"SANDBOX_DAYTONA_API_KEYS: every key needs {MIN_SECRET_BYTES}+ random bytes")
        return self

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Read the environment (plus ``overrides``), or raise ``ConfigError``."""
        try:
            settings = cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from None
        return settings

    def provider_config(self, name: str) -> BaseSettings | None:
        """The sub-config of provider ``name`` (``settings.<name>``); ``None`` if it has none."""
        field = type(self).model_fields.get(name)
        if field is None or not _is_sub_config(field):
            return None
        config: BaseSettings = getattr(self, name)
        return config

    @property
    def instance_scope(self) -> str:
        """A stable id of this service's state (``SANDBOX_INSTANCE_SCOPE``, else derived from the state URL).

        Providers that share a backend between services (one Docker engine) tag
        sandboxes with it and list only their own.
        """
        if self.instance_scope_override:
            return self.instance_scope_override
        return hashlib.sha256(self.effective_state_url.encode()).hexdigest()[:12]

    @property
    def secret_file(self) -> Path:
        return self.data_dir / SECRET_FILE_NAME

    @property
    def effective_state_url(self) -> str:
        return self.state_url or f"sqlite+aiosqlite:///{(self.data_dir / 'state.db').resolve()}"

    def resolved_secrets(self) -> list[bytes]:
        """The API secrets from the environment, else the data dir's secret file."""
        values = [s.get_secret_value().encode() for s in self.api_secrets]
        return values or read_secret_file(self.secret_file)

    def validate_secrets(self) -> list[bytes]:
        """Refuse to run with no secret, a short one, or a placeholder."""
        found = self.resolved_secrets()
        if not found:
            raise ConfigError(
                "no API secret: set SANDBOX_API_SECRET (32+ bytes, e.g. `openssl rand -hex 32`) "
                f"or run `sandboxctl serve`, which generates one into {self.secret_file}"
            )
        for value in found:
            if value.decode(errors="replace").lower() in _PLACEHOLDERS:
                raise ConfigError("SANDBOX_API_SECRET is a placeholder; generate a random one")
            if len(value) < MIN_SECRET_BYTES:
                raise ConfigError(f"SANDBOX_API_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
        return found


def ensure_secret_file(settings: Settings) -> bool:
    """Create a random secret in the data dir when none is configured.

    Returns True when a new secret was written (first run of ``make run``).
    """
    if settings.resolved_secrets():
        return False
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.secret_file
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return True
