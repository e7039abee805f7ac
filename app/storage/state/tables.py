"""SQLAlchemy table definitions of the state store.

Columns added later must be nullable (or have a server default) so that
``StateStore.open`` can add them to an existing database in place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON, list[Any]: JSON}


class SandboxRow(Base):
    """A sandbox. ``id`` is its public id; ``key`` the stable one its provider object is labelled with.

    They differ only for a warm pool member claimed under the caller's id (the
    claim renames ``id``); ``key`` never changes, so the reconciler matches the
    provider's objects by it. NULL in rows older than the column: read as ``id``.
    """

    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str | None] = mapped_column(String(128), index=True)
    #: The replica that created the row; while it lives, a ``creating`` row is its business.
    owner: Mapped[str | None] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(32))
    provider_object_id: Mapped[str | None] = mapped_column(String(256), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    image: Mapped[str | None] = mapped_column(String(512))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    network: Mapped[str | None] = mapped_column(String(128))
    command: Mapped[list[Any] | None] = mapped_column(JSON)
    #: Names (never values) of the env vars given at create.
    env_names: Mapped[list[Any] | None] = mapped_column(JSON)
    ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    repo_owner: Mapped[str | None] = mapped_column(String(256))
    repo_name: Mapped[str | None] = mapped_column(String(256))
    session_id: Mapped[str | None] = mapped_column(String(256), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    #: Names (never values) of env vars a claim put in the sandbox's env file: execs load it.
    claim_env: Mapped[list[Any] | None] = mapped_column(JSON)
    #: When a warm pool claim took it (session or plain); a claimed sandbox is no pool's to evict.
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class SandboxLabelRow(Base):
    """One row per label, so label filters are indexed lookups."""

    __tablename__ = "sandbox_labels"
    __table_args__ = (Index("ix_sandbox_labels_kv", "key", "value"),)

    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class SandboxEventRow(Base):
    """An audit trail of what happened to a sandbox (created, stopped, reaped, ...)."""

    __tablename__ = "sandbox_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class SnapshotRow(Base):
    """A snapshot; ``ready`` only once its manifest (the commit point) is written."""

    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sandbox_id: Mapped[str] = mapped_column(String(128), index=True)
    session_id: Mapped[str | None] = mapped_column(String(256), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(64))
    paths: Mapped[list[Any] | None] = mapped_column(JSON)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    raw_size: Mapped[int | None] = mapped_column(BigInteger)
    file_count: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    git_head: Mapped[str | None] = mapped_column(String(64))
    repo_owner: Mapped[str | None] = mapped_column(String(256))
    repo_name: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[str | None] = mapped_column(Text)
    #: The replica writing a ``creating`` snapshot; a dead owner's snapshot is failed and cleaned up.
    owner: Mapped[str | None] = mapped_column(String(128))
    #: Archive format (1: one blob, 2: chunks); NULL in rows older than the column: 1.
    format_version: Mapped[int | None] = mapped_column(Integer)
    #: Bytes this snapshot added to the bucket (v2: its new chunks; v1: its whole blob).
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ChunkRow(Base):
    """One chunk of the snapshot chunk store (``chunks/<sha256>`` in the blob store).

    ``marked_at`` is refreshed by every writer *before* it relies on the chunk (skips
    its upload) and again just before it commits a manifest listing it; garbage
    collection only claims chunks whose mark is older than its grace period
    (``app.services.chunk_gc`` explains the protocol). ``state`` is ``live``, or
    ``deleting`` from the moment the collector claimed it until its blob is gone.
    """

    __tablename__ = "snapshot_chunks"
    __table_args__ = (Index("ix_snapshot_chunks_state_mark", "state", "marked_at"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    raw_size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    marked_at: Mapped[datetime]


class CallbackRow(Base):
    """One outbound callback of the durable outbox (``app.services.callbacks``).

    A worker owns a row while ``lease_until`` is in the future and
    ``lease_owner`` holds its claim token; the lease is what keeps two
    replicas sharing the database from sending the same callback at once.
    """

    __tablename__ = "callbacks"
    __table_args__ = (Index("ix_callbacks_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    #: The exact JSON text sent (and signed) on every attempt.
    body: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(256), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    #: pending | delivered | gave_up
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    #: Why the last attempt failed; scrubbed of secrets and tokens before it is stored.
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime]


class PoolRow(Base):
    """A warm pool: how many ready sandboxes to keep for one (repo, image).

    Members are ordinary ``sandboxes`` rows carrying the label
    ``sandbox-control.pool=<name>``; only the pool's configuration lives here.
    """

    __tablename__ = "pools"
    __table_args__ = (Index("ix_pools_repo", "repo_owner", "repo_name"),)

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    repo_owner: Mapped[str] = mapped_column(String(256))
    repo_name: Mapped[str] = mapped_column(String(256))
    branch: Mapped[str | None] = mapped_column(String(255))
    #: None means the service's base image at the time each member is created.
    image: Mapped[str | None] = mapped_column(String(512))
    #: Members boot from this repo image (``repo_images``) instead of cloning.
    repo_image_id: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[int] = mapped_column(Integer)
    max_age_seconds: Mapped[int] = mapped_column(Integer)
    #: True for pools made by ``POST /api/warm-sandbox`` rather than ``PUT /v1/pools``.
    implicit: Mapped[bool | None] = mapped_column(default=False)
    #: ``session`` (members boot a repository's runtime; NULL in older rows) or ``plain`` (plain
    #: sandboxes; repo_owner/repo_name are empty then).
    kind: Mapped[str | None] = mapped_column(String(16))
    #: A plain pool's member configuration (its env is configuration: claim-time env is never stored).
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    env: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    network: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class BuildRow(Base):
    """A repo image build job (``app.services.builds``); persisted before it is answered."""

    __tablename__ = "builds"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    repo_owner: Mapped[str] = mapped_column(String(256))
    repo_name: Mapped[str] = mapped_column(String(256))
    branch: Mapped[str | None] = mapped_column(String(255))
    #: queued | building | ready | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    callback_url: Mapped[str | None] = mapped_column(Text)
    #: The build's user env vars, kept only until its sandbox exists (then cleared).
    pending_env: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sandbox_id: Mapped[str | None] = mapped_column(String(128))
    repo_image_id: Mapped[str | None] = mapped_column(String(128))
    base_sha: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    #: Bytes of the log kept (after redaction and the size cap).
    log_bytes: Mapped[int | None] = mapped_column(BigInteger, default=0)
    #: Bytes of the sandbox's raw log file consumed so far (a resumed follower starts there).
    log_offset: Mapped[int | None] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class BuildLogRow(Base):
    """One chunk of a build's log, in order; readers follow by ``seq``."""

    __tablename__ = "build_logs"

    build_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[str] = mapped_column(Text)


class RepoImageRow(Base):
    """A repository cloned and set up at a known commit, saved by a build.

    ``kind`` says what ``ref`` names: ``image`` (a provider-native image, e.g. a
    committed Docker image) or ``snapshot`` (a snapshot-format blob restored
    into a new sandbox).
    """

    __tablename__ = "repo_images"
    __table_args__ = (Index("ix_repo_images_repo", "repo_owner", "repo_name", "status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    build_id: Mapped[str] = mapped_column(String(128), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(512))
    repo_owner: Mapped[str] = mapped_column(String(256))
    repo_name: Mapped[str] = mapped_column(String(256))
    branch: Mapped[str | None] = mapped_column(String(255))
    base_sha: Mapped[str] = mapped_column(String(64))
    #: ready | deleted
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LeaseRow(Base):
    """A named lease on background work (``app.services.leases``): who holds it, until when.

    Taken and renewed by conditional UPDATEs (``owner`` = us or ``expires_at``
    passed), so replicas sharing the database never run one job twice, and a
    dead replica's work is taken over once its lease runs out.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]


class ReplicaRow(Base):
    """A service replica sharing this database, kept alive by its heartbeat."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime] = mapped_column(index=True)


class IdempotencyRow(Base):
    """An ``Idempotency-Key`` seen on a creating endpoint (``app.services.idempotency``)."""

    __tablename__ = "idempotency_keys"

    #: sha256 of the endpoint's scope and the caller's key.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: sha256 of the request's canonical JSON: another body under the same key is a 409.
    request_hash: Mapped[str] = mapped_column(String(64))
    #: running | done
    status: Mapped[str] = mapped_column(String(16))
    #: The id of what the request makes (sandbox, snapshot, build), fixed when the key is first seen.
    resource_id: Mapped[str] = mapped_column(String(128))
    #: The replica running it; a retry takes over a dead one's.
    owner: Mapped[str | None] = mapped_column(String(128))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class PreviewRow(Base):
    """A preview URL of one sandbox port (``app.services.previews``); deleting the row revokes it.

    The token is not stored: it is a signature over these columns, so the row is the
    revocation list every replica shares.
    """

    __tablename__ = "previews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sandbox_id: Mapped[str] = mapped_column(String(128), index=True)
    port: Mapped[int] = mapped_column(Integer)
    #: Host-form requests need no token (the path form always carries one).
    public: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
