"""Session sandboxes: a repository, the env server and the bridge, per control-plane session.

This is where the service meets the in-sandbox runtime. The environment is
built by ``sandbox_runtime.sandbox_env.build_sandbox_env`` (the single source
both sides import), the clone token is minted here (GitHub App) and handed
over only through the environment, and the sandbox's entry command is the
provider's way of starting ``python -m sandbox_runtime``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import BadRequest, ReservedEnvNames
from app.logging import get_logger
from app.providers.base import Provider, Resources
from app.schemas.common import validate_env
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.github_tokens import GitHubAppTokenProvider, api_base_for, load_private_key
from app.services.hosts import check_url_allowed
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService, new_sandbox_id
from app.services.snapshots import SnapshotService
from app.settings import Settings
from app.storage.state.repo_images import RepoImageRecord
from app.storage.state.sandboxes import SandboxRecord
from sandbox_runtime.contract import BootMode, SessionConfig
from sandbox_runtime.sandbox_env import ReservedEnvNameError, build_sandbox_env, find_reserved_env_names

log = get_logger("sessions")


@dataclass
class SessionLaunch:
    """Everything one session sandbox needs, whichever API asked for it."""

    session: SessionConfig
    control_plane_url: str
    sandbox_auth_token: str
    sandbox_id: str | None = None
    user_env: dict[str, str] = field(default_factory=dict)
    snapshot_id: str | None = None
    ttl_seconds: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    image: str | None = None
    #: Boot from this repo image (boot mode ``repo_image``): fetch and reset, no clone, no setup.sh.
    repo_image: RepoImageRecord | None = None
    #: The commit the caller believes the image holds (defaults to the image's own).
    repo_image_sha: str | None = None

    @classmethod
    def build(
        cls,
        *,
        session_id: str,
        repo_owner: str,
        repo_name: str,
        control_plane_url: str,
        sandbox_auth_token: str,
        branch: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        opencode_session_id: str | None = None,
        base_sha: str | None = None,
        **launch: Any,
    ) -> SessionLaunch:
        """The one place a session's config is assembled, whichever API's fields it comes from.

        ``provider``/``model`` of None take the runtime's defaults; ``launch``
        holds the other :class:`SessionLaunch` fields.
        """
        config: dict[str, Any] = {"provider": provider, "model": model}
        session = SessionConfig(
            session_id=session_id,
            repo_owner=repo_owner,
            repo_name=repo_name,
            branch=branch,
            opencode_session_id=opencode_session_id,
            base_sha=base_sha,
            **{k: v for k, v in config.items() if v is not None},
        )
        return cls(
            session=session, control_plane_url=control_plane_url, sandbox_auth_token=sandbox_auth_token, **launch
        )


def github_tokens_from(settings: Settings) -> GitHubAppTokenProvider | None:
    """The GitHub App token minter when an app is configured, else None (public repos)."""
    if not (settings.github_app_id and settings.github_app_installation_id):
        return None
    pem = settings.github_app_private_key.get_secret_value() if settings.github_app_private_key else None
    key = load_private_key(pem, settings.github_app_private_key_file)
    api_base = settings.github_api_base or api_base_for(settings.github_hostname)
    return GitHubAppTokenProvider(
        app_id=settings.github_app_id,
        private_key=key,
        installation_id=settings.github_app_installation_id,
        api_base=api_base,
    )


class SessionService:
    """Launch session sandboxes: check, build the env contract, create or restore."""

    def __init__(
        self,
        settings: Settings,
        sandboxes: SandboxService,
        snapshots: SnapshotService,
        provider: Provider,
        tokens: GitHubAppTokenProvider | None,
        repo_images: RepoImageService,
    ) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.snapshots = snapshots
        self.provider = provider
        self.tokens = tokens
        self.repo_images = repo_images

    def check(self, launch: SessionLaunch) -> None:
        """Everything that can be refused is refused here, before anything exists."""
        check_url_allowed(
            launch.control_plane_url, self.settings.allowed_control_plane_hosts, field="control_plane_url"
        )
        reserved = find_reserved_env_names(launch.user_env)
        if reserved:
            raise ReservedEnvNames(reserved)
        try:
            validate_env(launch.user_env)
        except ValueError as exc:
            raise BadRequest(str(exc), field="user_env_vars") from None

    async def clone_token(self) -> str | None:
        """A GitHub App installation token, else the configured static token, else None (public repos)."""
        if self.tokens is not None:
            return (await self.tokens.get_token()).token
        static = self.settings.vcs_clone_token
        return static.get_secret_value() if static is not None else None

    def _env_server_port(self) -> int | None:
        """A port of its own when sandboxes share the host's loopback (local, host network).

        Otherwise two sandboxes' env servers would collide on the default port,
        and one sandbox's bridge could end up talking to another's env server.
        """
        if not self.provider.capabilities.shared_loopback or self.settings.env_server_cmd:
            return None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    async def runtime_env(
        self,
        *,
        sandbox_id: str,
        repo_owner: str,
        repo_name: str,
        boot_mode: BootMode = BootMode.FRESH,
        session: SessionConfig | None = None,
        branch: str | None = None,
        control_plane_url: str | None = None,
        sandbox_auth_token: str | None = None,
        user_env: Mapping[str, str] | None = None,
        session_config_file: str | None = None,
        runtime_overrides: Mapping[str, str] | None = None,
        repo_image_sha: str | None = None,
    ) -> dict[str, str]:
        """The env contract of one runtime sandbox, with a freshly minted clone token.

        Shared by session launches and warm-pool members (which boot without a
        session and wait for ``session_config_file``).
        """
        try:
            return build_sandbox_env(
                sandbox_id=sandbox_id,
                repo_owner=repo_owner,
                repo_name=repo_name,
                boot_mode=boot_mode,
                control_plane_url=control_plane_url,
                sandbox_auth_token=sandbox_auth_token,
                session=session,
                branch=branch,
                vcs_host=self.settings.vcs_host or self.settings.github_hostname or "github.com",
                vcs_clone_token=await self.clone_token(),
                vcs_clone_url_template=self.settings.vcs_clone_url_template,
                env_server_cmd=self.settings.env_server_cmd,
                env_server_port=self._env_server_port(),
                session_config_file=session_config_file,
                runtime_overrides=runtime_overrides,
                user_env=user_env,
                repo_image_sha=repo_image_sha,
            )
        except ReservedEnvNameError as exc:
            raise ReservedEnvNames(exc.names) from None

    async def launch(self, launch: SessionLaunch) -> SandboxRecord:
        """Create (or restore) the sandbox with the runtime as its entry command."""
        self.check(launch)
        sandbox_id = launch.sandbox_id or new_sandbox_id()
        session = launch.session
        image = launch.repo_image
        if launch.snapshot_id:
            boot_mode = BootMode.SNAPSHOT_RESTORE
        elif image is not None:
            if (image.repo_owner, image.repo_name) != (session.repo_owner, session.repo_name):
                raise BadRequest(
                    f"repo image {image.id!r} holds {image.repo_owner}/{image.repo_name}", field="repo_image_id"
                )
            boot_mode = BootMode.REPO_IMAGE
        else:
            boot_mode = BootMode.FRESH
        env = await self.runtime_env(
            sandbox_id=sandbox_id,
            repo_owner=session.repo_owner,
            repo_name=session.repo_name,
            boot_mode=boot_mode,
            repo_image_sha=(launch.repo_image_sha or image.base_sha) if image is not None else None,
            control_plane_url=launch.control_plane_url,
            sandbox_auth_token=launch.sandbox_auth_token,
            session=session,
            branch=session.branch,
            user_env=launch.user_env,
        )
        request = CreateSandboxRequest(
            sandbox_id=sandbox_id,
            image=launch.image,
            labels=launch.labels,
            resources=launch.resources,
            ttl_seconds=launch.ttl_seconds,
            command=self.provider.runtime_command(),
        )
        fields: dict[str, Any] = {
            "session_id": session.session_id,
            "repo_owner": session.repo_owner,
            "repo_name": session.repo_name,
        }
        if launch.snapshot_id:
            record = await self.snapshots.restore(launch.snapshot_id, request, extra_env=env, **fields)
        elif image is not None:
            record = await self.repo_images.create_sandbox(image, request, extra_env=env, **fields)
        else:
            record = await self.sandboxes.create(request, extra_env=env, **fields)
        log.info(
            "session.launched",
            sandbox_id=record.id,
            session_id=session.session_id,
            boot_mode=boot_mode.value,
            repo_image_id=image.id if image is not None else None,
        )
        return record
