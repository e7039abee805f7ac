"""``/v1/pools``: warm pool configuration and state. HTTP translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import ServicesDep
from app.services.models import PoolDrained, PoolList, PoolView, PutPoolRequest

router = APIRouter(prefix="/v1/pools", tags=["pools"])

NamePath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="letters, digits, ._- (max 128)")
]


@router.put("/{name}")
async def put_pool(name: NamePath, body: PutPoolRequest, services: ServicesDep) -> PoolView:
    """Create or reconfigure a pool; members are created (or evicted) in the background to match."""
    return await services.pools.put(name, body)


@router.get("")
async def list_pools(services: ServicesDep) -> PoolList:
    """Every pool with its members by state (ready, creating, claimed)."""
    return PoolList(pools=await services.pools.list())


@router.get("/{name}")
async def get_pool(name: NamePath, services: ServicesDep) -> PoolView:
    """One pool with its members by state."""
    return await services.pools.view(await services.pools.get(name))


@router.delete("/{name}")
async def delete_pool(name: NamePath, services: ServicesDep) -> PoolDrained:
    """Delete the pool and its unclaimed members; claimed sandboxes keep running."""
    return PoolDrained(name=name, deleted_members=await services.pools.delete(name))
