"""``/v1/replicas``: which replicas share the state store and which holds which lease. HTTP translation only."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.schemas.replicas import ReplicaList, ReplicaView

router = APIRouter(prefix="/v1/replicas", tags=["replicas"])


@router.get("")
async def list_replicas(services: ServicesDep) -> ReplicaList:
    """Live replicas (recent heartbeat), oldest first, each with the leases it holds."""
    keeper = services.leases
    leases = await keeper.leases()
    return ReplicaList(replicas=[ReplicaView.of(r, leases, this=keeper.replica_id) for r in await keeper.replicas()])
