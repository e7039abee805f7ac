"""Daytona's toolbox info calls: ``get_user_home_dir``, ``get_work_dir`` and the daemon version."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SandboxesDep
from app.schemas.sandboxes import ExecRequest
from app.services.sandboxes import DEFAULT_CWD

router = APIRouter(prefix="/daytona/toolbox/{sandbox_id}", tags=["daytona"], include_in_schema=False)

#: What ``/version`` reports as the daemon's version: this adapter, not Daytona's daemon.
VERSION = "sandbox-control"


@router.get("/user-home-dir")
async def user_home_dir(sandbox_id: str, sandboxes: SandboxesDep) -> dict[str, str]:
    """``$HOME`` of the sandbox's user (asked of the sandbox, as it differs by provider and image)."""
    result = await sandboxes.exec(sandbox_id, ExecRequest(command='printf %s "$HOME"', timeout_seconds=30))
    return {"dir": result.stdout.decode(errors="replace") or DEFAULT_CWD}


@router.get("/work-dir")
async def work_dir(sandbox_id: str, sandboxes: SandboxesDep) -> dict[str, str]:
    """Where commands start when no ``cwd`` is given."""
    await sandboxes.running(sandbox_id)
    return {"dir": DEFAULT_CWD}


@router.get("/version")
async def version(sandbox_id: str, sandboxes: SandboxesDep) -> dict[str, str]:
    await sandboxes.get(sandbox_id)
    return {"version": VERSION}
