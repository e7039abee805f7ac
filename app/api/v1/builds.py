"""``/v1/builds``: repo image builds, their status, logs (SSE to follow) and cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from app.api.deps import ServicesDep
from app.services.builds import parse_last_event_id, sse_event
from app.services.models import RepoRef, StrictModel
from app.storage.state_builds import BuildRecord

router = APIRouter(prefix="/v1/builds", tags=["builds"])

BUILD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
BuildIdPath = Annotated[str, Path(pattern=BUILD_ID_PATTERN, description="letters, digits, ._:- (max 128)")]


class CreateBuildRequest(StrictModel):
    """``POST /v1/builds``: clone ``repo`` at its branch, run setup.sh, save a repo image."""

    build_id: str = Field(pattern=BUILD_ID_PATTERN, description="the caller's id; the same id twice is one build")
    repo: RepoRef
    callback_url: str | None = Field(default=None, min_length=1, max_length=2048)
    env: dict[str, str] = Field(default_factory=dict, description="env vars of setup.sh (masked in the log)")


class BuildView(BaseModel):
    """A build's state; ``provider_image_id`` is set once it is ``ready``."""

    id: str
    status: str
    repo_owner: str
    repo_name: str
    branch: str | None
    sandbox_id: str | None
    provider_image_id: str | None
    base_sha: str | None
    error: str | None
    log_bytes: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, record: BuildRecord) -> BuildView:
        return cls(
            id=record.id,
            status=record.status,
            repo_owner=record.repo_owner,
            repo_name=record.repo_name,
            branch=record.branch,
            sandbox_id=record.sandbox_id,
            provider_image_id=record.repo_image_id if record.status == "ready" else None,
            base_sha=record.base_sha,
            error=record.error,
            log_bytes=record.log_bytes,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
        )


@router.post("", status_code=202)
async def create_build(body: CreateBuildRequest, services: ServicesDep) -> BuildView:
    """Queue a build and answer at once; the callback (if any) reports the outcome."""
    record = await services.builds.submit(
        build_id=body.build_id,
        repo_owner=body.repo.owner,
        repo_name=body.repo.name,
        branch=body.repo.branch,
        callback_url=body.callback_url,
        env=body.env,
    )
    return BuildView.of(record)


@router.get("/{build_id}")
async def get_build(build_id: BuildIdPath, services: ServicesDep) -> BuildView:
    return BuildView.of(await services.builds.get(build_id))


@router.post("/{build_id}/cancel")
async def cancel_build(build_id: BuildIdPath, services: ServicesDep) -> BuildView:
    """Stop a queued or running build (a finished one is returned unchanged)."""
    return BuildView.of(await services.builds.cancel(build_id))


@router.get("/{build_id}/logs", response_model=None)
async def build_logs(
    build_id: BuildIdPath,
    request: Request,
    services: ServicesDep,
    follow: Annotated[bool, Query(description="stream as server-sent events until the build ends")] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The log so far as text, or with ``follow`` (or ``Accept: text/event-stream``) as SSE.

    SSE: one ``log`` event per stored chunk (``id`` = its sequence number, so
    a reconnect with ``Last-Event-ID`` resumes), then one ``end`` event with
    the build's final status.
    """
    builds = services.builds
    await builds.get(build_id)  # 404 before any streaming starts
    wants_sse = follow or "text/event-stream" in request.headers.get("accept", "")
    if not wants_sse:

        async def text() -> AsyncIterator[bytes]:
            after = 0
            while chunks := await builds.log_chunks(build_id, after_seq=after):
                for seq, chunk in chunks:
                    after = seq
                    yield chunk.encode()

        return StreamingResponse(text(), media_type="text/plain; charset=utf-8")

    async def events() -> AsyncIterator[bytes]:
        async for item in builds.follow(build_id, after_seq=parse_last_event_id(last_event_id)):
            if isinstance(item, tuple):
                seq, chunk = item
                yield sse_event(chunk, event="log", event_id=seq).encode()
            else:
                yield sse_event(BuildView.of(item).model_dump_json(), event="end").encode()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
