"""Liveness, readiness and metrics (no authentication)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServicesDep
from app.errors import SandboxControlError

router = APIRouter(tags=["health"])
TEXT = {"type": "string"}
_CHECK_TIMEOUT = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process serves requests."""
    return {"status": "ok"}


@router.get("/api/health")
async def compat_health() -> dict[str, Any]:
    """Open-Inspect's health endpoint."""
    return {"success": True, "data": {"status": "healthy", "service": "sandbox-control"}}


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe(), _CHECK_TIMEOUT)
    except TimeoutError:
        return name, "timeout"
    except SandboxControlError as exc:
        return name, f"error: {exc.message}"
    except Exception as exc:  # a readiness probe reports, it does not crash
        return name, f"error: {type(exc).__name__}"
    return name, "ok"


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Readiness: the state store, the blob store and the provider answer."""
    probes = [("state", services.store.ping), ("provider", services.provider.ping), ("blobs", services.blobs.ping)]
    checks = dict(await asyncio.gather(*(_check(name, probe) for name, probe in probes)))
    ready = all(v == "ok" for v in checks.values())
    keeper = services.leases
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "replica": keeper.replica_id,
        "leases": sorted(keeper.held),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    services.metrics.set_sandbox_counts(await services.store.sandboxes.count_by_status())
    services.metrics.set_chunk_totals(*await services.store.chunks.totals())
    services.metrics.leases_held.set(len(services.leases.held))
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
