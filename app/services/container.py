"""The services of one app instance, built in the lifespan (``app.wiring``)."""

from __future__ import annotations

from dataclasses import dataclass

from app.metrics import Metrics
from app.providers.base import Provider
from app.services.builds import BuildService
from app.services.callbacks import CallbackOutbox
from app.services.daytona_sandboxes import DaytonaSandboxes
from app.services.daytona_sessions import DaytonaSessions
from app.services.file_tree import FileTree
from app.services.files import FileService
from app.services.idempotency import IdempotencyService
from app.services.launcher import SandboxLauncher
from app.services.leases import LeaseKeeper
from app.services.pools import PoolService
from app.services.previews import PreviewService, Upstreams
from app.services.processes import ProcessService
from app.services.reconciler import Reconciler
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService
from app.services.sessions import SessionService
from app.services.snapshot_recovery import SnapshotRecovery
from app.services.snapshots import SnapshotService
from app.settings import Settings
from app.storage.blobs.base import BlobStore
from app.storage.state import StateStore


@dataclass
class Services:
    """Everything a route may reach, typed; ``app.api.deps`` hands out the parts."""

    settings: Settings
    metrics: Metrics
    store: StateStore
    provider: Provider
    blobs: BlobStore
    sandboxes: SandboxService
    files: FileService
    reconciler: Reconciler
    snapshots: SnapshotService
    #: Settles the snapshots of writers that died (with reconciliation).
    snapshot_recovery: SnapshotRecovery
    sessions: SessionService
    pools: PoolService
    repo_images: RepoImageService
    builds: BuildService
    launcher: SandboxLauncher
    #: None when ``INTERNAL_CALLBACK_SECRET`` is not configured (builds without callbacks only).
    callbacks: CallbackOutbox | None
    #: This replica's id, heartbeat and leases on background work.
    leases: LeaseKeeper
    #: ``Idempotency-Key`` on the creating endpoints.
    idempotency: IdempotencyService
    #: Background processes of sandboxes (``/v1/sandboxes/{id}/processes``).
    processes: ProcessService
    #: Preview URLs (``/v1/sandboxes/{id}/previews``) and the proxy's gate.
    previews: PreviewService
    #: The proxy's connections to sandbox ports.
    preview_upstreams: Upstreams
    #: Directory-level file operations (the Daytona-compatible toolbox).
    file_tree: FileTree
    #: Daytona's sandbox lifecycle and sessions, on the services above (``/daytona``).
    daytona_sandboxes: DaytonaSandboxes
    daytona_sessions: DaytonaSessions
