"""``GET /v1/replicas``: the service replicas sharing this state store, and what each one runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from app.schemas.common import StrictModel
from app.storage.state.leases import LeaseRecord, ReplicaRecord


class LeaseView(StrictModel):
    name: str
    expires_at: datetime


class ReplicaView(StrictModel):
    """A live replica and the leases on background work it holds."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    #: True for the replica that answered this request.
    this: bool
    leases: list[LeaseView]

    @classmethod
    def of(cls, replica: ReplicaRecord, leases: Sequence[LeaseRecord], *, this: str) -> ReplicaView:
        return cls(
            id=replica.id,
            host=replica.host,
            pid=replica.pid,
            started_at=replica.started_at,
            heartbeat_at=replica.heartbeat_at,
            this=replica.id == this,
            leases=[
                LeaseView(name=lease.name, expires_at=lease.expires_at) for lease in leases if lease.owner == replica.id
            ],
        )


class ReplicaList(StrictModel):
    replicas: list[ReplicaView]
