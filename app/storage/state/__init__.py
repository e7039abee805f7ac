"""The state store: one database, one store per aggregate.

``StateStore`` opens the database (SQLite by default, PostgreSQL by URL) and
hands out the stores; a service is given only the stores it uses.
"""

from __future__ import annotations

from app.storage.state.builds import BuildRecord, BuildStore
from app.storage.state.callbacks import CallbackRecord, CallbackStore
from app.storage.state.chunks import ChunkIndex
from app.storage.state.database import Database
from app.storage.state.idempotency import IdempotencyRecord, IdempotencyStore
from app.storage.state.leases import LeaseRecord, LeaseStore, ReplicaRecord, ReplicaStore
from app.storage.state.pools import PoolRecord, PoolStore
from app.storage.state.previews import PreviewRecord, PreviewStore
from app.storage.state.repo_images import RepoImageRecord, RepoImageStore
from app.storage.state.sandboxes import SandboxRecord, SandboxStore
from app.storage.state.snapshots import SnapshotRecord, SnapshotStore

__all__ = [
    "BuildRecord",
    "BuildStore",
    "CallbackRecord",
    "CallbackStore",
    "ChunkIndex",
    "IdempotencyRecord",
    "IdempotencyStore",
    "LeaseRecord",
    "LeaseStore",
    "PoolRecord",
    "PoolStore",
    "PreviewRecord",
    "PreviewStore",
    "ReplicaRecord",
    "ReplicaStore",
    "RepoImageRecord",
    "RepoImageStore",
    "SandboxRecord",
    "SandboxStore",
    "SnapshotRecord",
    "SnapshotStore",
    "StateStore",
]


class StateStore:
    """The database and its per-aggregate stores; ``open()`` before use, ``aclose()`` after."""

    def __init__(self, url: str) -> None:
        self.database = Database(url)
        self.sandboxes = SandboxStore(self.database)
        self.snapshots = SnapshotStore(self.database)
        self.chunks = ChunkIndex(self.database)
        self.pools = PoolStore(self.database)
        self.builds = BuildStore(self.database)
        self.repo_images = RepoImageStore(self.database)
        self.callbacks = CallbackStore(self.database)
        self.leases = LeaseStore(self.database)
        self.replicas = ReplicaStore(self.database)
        self.idempotency = IdempotencyStore(self.database)
        self.previews = PreviewStore(self.database)

    @property
    def url(self) -> str:
        return self.database.url

    async def open(self) -> None:
        """Connect, and create or upgrade the schema."""
        await self.database.open()

    async def aclose(self) -> None:
        await self.database.aclose()

    async def ping(self) -> None:
        """Readiness: one round trip to the database."""
        await self.database.ping()
