"""Which service makes a sandbox: the one decision behind every create of the native and compat APIs.

Routes hand their request model here and get a record back; they never pick
between a warm-pool claim, a session launch, a restore and a plain create.
"""

from __future__ import annotations

from app.errors import BadRequest
from app.schemas.common import RepoRef
from app.schemas.compat import CompatCreateSandbox, CompatRestoreSandbox
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.pools import PoolService
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService
from app.services.sessions import SessionLaunch, SessionService
from app.services.snapshots import SnapshotService
from app.storage.state.sandboxes import SandboxRecord


class SandboxLauncher:
    """Create sandboxes from API requests: warm first for sessions, else cold."""

    def __init__(
        self,
        sandboxes: SandboxService,
        snapshots: SnapshotService,
        sessions: SessionService,
        pools: PoolService,
        repo_images: RepoImageService,
    ) -> None:
        self.sandboxes = sandboxes
        self.snapshots = snapshots
        self.sessions = sessions
        self.pools = pools
        self.repo_images = repo_images

    async def create(self, request: CreateSandboxRequest, *, resume: bool = False) -> SandboxRecord:
        """``POST /v1/sandboxes``.

        ``repo`` + ``session``: a session sandbox, claimed from a warm pool of the
        repository when one has a ready member, else created cold. ``from_pool``
        with ``session`` (``repo`` defaults to the pool's): claim from that session
        pool, cold when it has no ready member; without ``session``: claim a plain
        pool's member (cold from the pool's configuration when none is ready).
        ``from_snapshot``: restored from a snapshot. Otherwise a plain sandbox. With ``resume`` (an idempotent request
        taken over after a crash) a sandbox of ``request.sandbox_id`` that exists
        already is returned instead of making a second one.
        """
        if resume and request.sandbox_id is not None:
            existing = await self.sandboxes.find(request.sandbox_id, include_deleted=True)
            if existing is not None:
                return existing
        if request.from_pool and request.session is None:
            return await self.pools.launch_plain(request)
        if request.from_pool:
            if request.repo is None:  # the pool knows its repository
                pool = await self.pools.session_pool(request.from_pool)
                request = request.model_copy(update={"repo": RepoRef(owner=pool.repo_owner, name=pool.repo_name)})
            return await self.pools.launch(self._v1_session(request), pool_name=request.from_pool)
        if request.repo is not None or request.session is not None:
            return await self.pools.launch(self._v1_session(request))
        if request.from_snapshot:
            return await self.snapshots.restore(request.from_snapshot, request)
        return await self.sandboxes.create(request)

    @staticmethod
    def _v1_session(request: CreateSandboxRequest) -> SessionLaunch:
        if request.repo is None or request.session is None:
            field = "repo" if request.repo is None else "session"
            raise BadRequest("a session sandbox needs both repo and session", field=field)
        if request.command is not None:
            raise BadRequest("a session sandbox runs the runtime; command must be absent", field="command")
        session = request.session
        return SessionLaunch.build(
            session_id=session.session_id,
            repo_owner=request.repo.owner,
            repo_name=request.repo.name,
            branch=request.repo.branch,
            provider=session.provider,
            model=session.model,
            opencode_session_id=session.opencode_session_id,
            base_sha=session.base_sha,
            control_plane_url=session.control_plane_url,
            sandbox_auth_token=session.sandbox_auth_token,
            sandbox_id=request.sandbox_id,
            user_env=dict(request.env),
            snapshot_id=request.from_snapshot,
            ttl_seconds=request.ttl_seconds,
            labels=dict(request.labels),
            resources=request.resources,
            image=request.image,
        )

    async def create_session(self, body: CompatCreateSandbox) -> SandboxRecord:
        """``POST /api/create-sandbox``: warm first; a repo image when ``repo_image_id`` names one."""
        repo_image = await self.repo_images.get(body.repo_image_id) if body.repo_image_id else None
        launch = SessionLaunch.build(
            session_id=body.session_id,
            repo_owner=body.repo_owner,
            repo_name=body.repo_name,
            branch=body.branch,
            provider=body.provider,
            model=body.model,
            opencode_session_id=body.opencode_session_id,
            base_sha=body.base_sha,
            control_plane_url=body.control_plane_url,
            sandbox_auth_token=body.sandbox_auth_token,
            sandbox_id=body.sandbox_id,
            user_env=dict(body.user_env_vars or {}),
            snapshot_id=body.snapshot_id,
            ttl_seconds=body.timeout_seconds,
            repo_image=repo_image,
            repo_image_sha=body.repo_image_sha,
            resources=body.resources(),
        )
        return await self.pools.launch(launch)

    async def restore_session(self, body: CompatRestoreSandbox) -> SandboxRecord:
        """``POST /api/restore-sandbox``: always cold (a warm member holds none of the snapshot)."""
        config = body.session_config
        launch = SessionLaunch.build(
            **config.session_fields(),
            control_plane_url=body.control_plane_url,
            sandbox_auth_token=body.sandbox_auth_token,
            sandbox_id=body.sandbox_id,
            user_env=dict(body.user_env_vars or {}),
            snapshot_id=body.snapshot_image_id,
            ttl_seconds=body.timeout_seconds,
            resources=body.resources(),
        )
        return await self.sessions.launch(launch)
