"""The environment the service gives a sandbox's ``python -m sandbox_runtime``.

Built from the names of :mod:`sandbox_runtime.contract`; user env vars may not
shadow any of them.
"""

from __future__ import annotations

from collections.abc import Mapping

from sandbox_runtime.contract import (
    BOOT_MODE,
    CONTROL_PLANE_URL,
    DEFAULT_CLONE_URL_TEMPLATE,
    DEFAULT_VCS_CLONE_USERNAME,
    DEFAULT_VCS_HOST,
    ENV_SERVER_CMD,
    ENV_SERVER_PORT,
    REPO_BRANCH,
    REPO_IMAGE_SHA,
    REPO_NAME,
    REPO_OWNER,
    RESERVED_ENV_NAMES,
    RUNTIME_STATE_DIR,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_ID,
    SESSION_CONFIG,
    SESSION_CONFIG_FILE,
    VCS_CLONE_TOKEN,
    VCS_CLONE_URL_TEMPLATE,
    VCS_CLONE_USERNAME,
    VCS_HOST,
    WORKSPACE_DIR,
    BootMode,
    SessionConfig,
)


def find_reserved_env_names(user_env: Mapping[str, str] | None) -> list[str]:
    """Return the reserved names present in ``user_env``, sorted (empty when the dict is acceptable)."""
    if not user_env:
        return []
    return sorted(name for name in user_env if name in RESERVED_ENV_NAMES)


class ReservedEnvNameError(ValueError):
    """User env vars try to set names the runtime reserves; ``names`` lists them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"reserved environment variable names may not be set: {', '.join(names)}")
        self.names = names


def build_sandbox_env(
    *,
    sandbox_id: str,
    repo_owner: str,
    repo_name: str,
    boot_mode: BootMode = BootMode.FRESH,
    control_plane_url: str | None = None,
    sandbox_auth_token: str | None = None,
    session: SessionConfig | None = None,
    branch: str | None = None,
    vcs_host: str = DEFAULT_VCS_HOST,
    vcs_clone_username: str = DEFAULT_VCS_CLONE_USERNAME,
    vcs_clone_token: str | None = None,
    vcs_clone_url_template: str | None = None,
    repo_image_sha: str | None = None,
    env_server_cmd: str | None = None,
    env_server_port: int | None = None,
    workspace_dir: str | None = None,
    state_dir: str | None = None,
    session_config_file: str | None = None,
    runtime_overrides: Mapping[str, str] | None = None,
    user_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the environment of a sandbox's ``python -m sandbox_runtime``.

    ``runtime_overrides`` may set any reserved tuning name (e.g. ``GIT_CLONE_DEPTH``);
    ``user_env`` may set none of them. Unset optional values are left out so the
    runtime's defaults apply.

    Raises:
        ReservedEnvNameError: ``user_env`` contains reserved names (answer 422 listing ``names``).
        ValueError: ``runtime_overrides`` contains a name that is not reserved, or the
            clone URL template embeds credentials.
    """
    reserved = find_reserved_env_names(user_env)
    if reserved:
        raise ReservedEnvNameError(reserved)
    template = vcs_clone_url_template or DEFAULT_CLONE_URL_TEMPLATE
    if "@" in template.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError(f"{VCS_CLONE_URL_TEMPLATE} must not embed credentials")
    env: dict[str, str] = dict(user_env or {})
    values: dict[str, str | None] = {
        SANDBOX_ID: sandbox_id,
        REPO_OWNER: repo_owner,
        REPO_NAME: repo_name,
        BOOT_MODE: BootMode(boot_mode).value,
        CONTROL_PLANE_URL: control_plane_url,
        SANDBOX_AUTH_TOKEN: sandbox_auth_token,
        SESSION_CONFIG: session.model_dump_json() if session else None,
        REPO_BRANCH: branch,
        VCS_HOST: vcs_host,
        VCS_CLONE_USERNAME: vcs_clone_username,
        VCS_CLONE_TOKEN: vcs_clone_token,
        VCS_CLONE_URL_TEMPLATE: vcs_clone_url_template,
        REPO_IMAGE_SHA: repo_image_sha,
        ENV_SERVER_CMD: env_server_cmd,
        ENV_SERVER_PORT: str(env_server_port) if env_server_port is not None else None,
        WORKSPACE_DIR: workspace_dir,
        RUNTIME_STATE_DIR: state_dir,
        SESSION_CONFIG_FILE: session_config_file,
    }
    env.update({name: value for name, value in values.items() if value is not None})
    for name, value in (runtime_overrides or {}).items():
        if name not in RESERVED_ENV_NAMES:
            raise ValueError(f"runtime override {name!r} is not a runtime env name")
        env[name] = value
    return env
