"""``/v1/builds``: repo image builds, their status, logs (SSE to follow) and cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import BuildsDep, IdempotencyDep
from app.api.idempotency import run_idempotent
from app.api.sse import SSE_HEADERS, parse_last_event_id, sse_event
from app.schemas.builds import BUILD_ID_PATTERN, BuildView, CreateBuildRequest

router = APIRouter(prefix="/v1/builds", tags=["builds"])

BuildIdPath = Annotated[str, Path(pattern=BUILD_ID_PATTERN, description="letters, digits, ._:- (max 128)")]


@router.post("", status_code=202, response_model=BuildView)
async def create_build(
    body: CreateBuildRequest, request: Request, builds: BuildsDep, idempotency: IdempotencyDep
) -> Response:
    """Queue a build and answer at once; the callback (if any) reports the outcome.

    The same ``build_id`` twice is one build; with an ``Idempotency-Key`` header a
    retry also gets the first answer again, and another body under it is a 409.
    """

    async def run(_build_id: str | None, _resumed: bool) -> BuildView:
        record = await builds.submit(
            build_id=body.build_id,
            repo_owner=body.repo.owner,
            repo_name=body.repo.name,
            branch=body.repo.branch,
            callback_url=body.callback_url,
            env=body.env,
        )
        return BuildView.of(record)

    return await run_idempotent(
        request,
        idempotency,
        scope="POST /v1/builds",
        payload=body.model_dump(mode="json"),
        new_id=lambda: body.build_id,
        run=run,
        status_code=202,
    )


@router.get("/{build_id}")
async def get_build(build_id: BuildIdPath, builds: BuildsDep) -> BuildView:
    return BuildView.of(await builds.get(build_id))


@router.post("/{build_id}/cancel")
async def cancel_build(build_id: BuildIdPath, builds: BuildsDep) -> BuildView:
    """Stop a queued or running build (a finished one is returned unchanged)."""
    return BuildView.of(await builds.cancel(build_id))


@router.get(
    "/{build_id}/logs",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the log as text, or (follow) server-sent events: `log` events, then one `end` event",
            # Event data is a log chunk (text) or, on the `end` event, the build as JSON.
            "content": {"text/plain": {"schema": {"type": "string"}}, "text/event-stream": {"schema": {}}},
        }
    },
)
async def build_logs(
    build_id: BuildIdPath,
    request: Request,
    builds: BuildsDep,
    follow: Annotated[bool, Query(description="stream as server-sent events until the build ends")] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The log so far as text, or with ``follow`` (or ``Accept: text/event-stream``) as SSE.

    SSE: one ``log`` event per stored chunk (``id`` = its sequence number, so
    a reconnect with ``Last-Event-ID`` resumes), then one ``end`` event with
    the build's final status.
    """
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

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
