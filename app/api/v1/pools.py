"""``/v1/pools``: warm pool configuration and state. HTTP translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import PoolsDep
from app.schemas.pools import PoolDrained, PoolList, PoolView, PutPoolRequest

router = APIRouter(prefix="/v1/pools", tags=["pools"])

NamePath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="letters, digits, ._- (max 128)")
]


@router.put("/{name}")
async def put_pool(name: NamePath, body: PutPoolRequest, pools: PoolsDep) -> PoolView:
    """Create or reconfigure a pool; members are created (or evicted) in the background to match."""
    state = await pools.put(name, body)
    return PoolView.of(state.pool, state.members)


@router.get("")
async def list_pools(pools: PoolsDep) -> PoolList:
    """Every pool with its members by state (ready, creating, claimed)."""
    return PoolList(pools=[PoolView.of(s.pool, s.members) for s in await pools.list()])


@router.get("/{name}")
async def get_pool(name: NamePath, pools: PoolsDep) -> PoolView:
    """One pool with its members by state."""
    state = await pools.state(await pools.get(name))
    return PoolView.of(state.pool, state.members)


@router.delete("/{name}")
async def delete_pool(name: NamePath, pools: PoolsDep) -> PoolDrained:
    """Delete the pool and its unclaimed members; claimed sandboxes keep running."""
    return PoolDrained(name=name, deleted_members=await pools.delete(name))
