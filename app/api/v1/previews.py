"""``/v1/sandboxes/{id}/previews``: preview URLs of sandbox ports. HTTP translation only.

The proxy itself is ``app.api.previews.gateway``; these routes make, list and
revoke previews, behind the API's HMAC authentication (which is why they may
show a preview's token again).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import PreviewsDep
from app.api.params import SandboxIdPath
from app.schemas.previews import CreatePreviewRequest, PreviewId, PreviewList, PreviewView

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/previews", tags=["previews"])


@router.post("", status_code=201)
async def create_preview(
    sandbox_id: SandboxIdPath, body: CreatePreviewRequest, request: Request, previews: PreviewsDep
) -> PreviewView:
    """A signed, expiring URL of ``port`` in the (running) sandbox; it dies with the sandbox."""
    return await previews.create(sandbox_id, body, str(request.base_url))


@router.get("")
async def list_previews(sandbox_id: SandboxIdPath, request: Request, previews: PreviewsDep) -> PreviewList:
    """The sandbox's live previews, with their URLs and tokens."""
    return PreviewList(previews=await previews.list(sandbox_id, str(request.base_url)))


@router.delete("/{preview_id}", status_code=204)
async def revoke_preview(sandbox_id: SandboxIdPath, preview_id: PreviewId, previews: PreviewsDep) -> Response:
    """Revoke the preview: its URLs stop working on every replica (within seconds elsewhere)."""
    await previews.revoke(sandbox_id, preview_id)
    return Response(status_code=204)
