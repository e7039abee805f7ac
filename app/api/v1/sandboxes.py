"""``/v1/sandboxes``: lifecycle, exec and files. HTTP translation only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import FilesDep, IdempotencyDep, LauncherDep, SandboxesDep, ServicesDep
from app.api.idempotency import run_idempotent
from app.api.output_frames import exec_frames
from app.api.output_sse import ENCODINGS, exec_sse, parse_encoding
from app.api.params import OCTET_STREAM_ANSWER, OCTET_STREAM_BODY, SandboxIdPath
from app.api.sse import SSE_HEADERS, until_disconnected
from app.errors import BadRequest
from app.frames import FRAMES_MEDIA_TYPE
from app.schemas.common import validate_labels
from app.schemas.sandboxes import (
    CreateSandboxRequest,
    EventList,
    EventView,
    ExecRequest,
    ExecResponse,
    SandboxList,
    SandboxView,
)
from app.services.sandboxes import new_sandbox_id

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

PathQuery = Annotated[str, Query(min_length=1, max_length=4096, description="absolute, or relative to /workspace")]
EncodingQuery = Annotated[
    str | None,
    Query(
        description="how a streamed answer writes output chunks: json (the default, `{data, encoding}`) or escaped "
        "(the bytes as they are, with backslash, LF and CR written as two-character backslash escapes)",
        # Checked by the route, so an unknown value is a 400 like other bad input, not a 422.
        json_schema_extra={"enum": list(ENCODINGS)},
    ),
]


def parse_label_filters(values: list[str]) -> dict[str, str]:
    """``label=k=v`` query values as a dict (400 naming the bad one)."""
    labels: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq:
            raise BadRequest(f"label filter {item!r} must be key=value", field="label")
        labels[key] = value
    try:
        return validate_labels(labels, allow_reserved=True)
    except ValueError as exc:
        raise BadRequest(str(exc), field="label") from None


@router.post("", status_code=201, response_model=SandboxView)
async def create_sandbox(
    body: CreateSandboxRequest, request: Request, launcher: LauncherDep, idempotency: IdempotencyDep
) -> Response:
    """Create a sandbox; answers once it can run commands.

    ``repo`` + ``session``: a session sandbox (the runtime clones, starts the env
    server and the bridge); a ready warm-pool member of the repository is claimed
    when there is one, else the sandbox is created cold. ``from_pool`` (needs
    ``session``; ``repo`` defaults to the pool's): claim from that pool, cold
    when it has no ready member. ``from_snapshot``: restored from a snapshot.
    With an ``Idempotency-Key`` header a retry gets the first answer again.
    """

    async def run(sandbox_id: str | None, resumed: bool) -> SandboxView:
        wanted = body if sandbox_id is None else body.model_copy(update={"sandbox_id": sandbox_id})
        return SandboxView.of(await launcher.create(wanted, resume=resumed))

    return await run_idempotent(
        request,
        idempotency,
        scope="POST /v1/sandboxes",
        payload=body.model_dump(mode="json"),
        new_id=lambda: body.sandbox_id or new_sandbox_id(),
        run=run,
        status_code=201,
    )


@router.get("")
async def list_sandboxes(
    sandboxes: SandboxesDep,
    label: Annotated[list[str], Query(max_length=64)] = [],  # noqa: B006
) -> SandboxList:
    """List live sandboxes, optionally filtered by ``label=key=value`` (repeatable, all must match)."""
    records = await sandboxes.list(parse_label_filters(label))
    return SandboxList(sandboxes=[SandboxView.of(r) for r in records])


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox_id: SandboxIdPath, sandboxes: SandboxesDep) -> SandboxView:
    """One sandbox, by its id or its provider object id (its status as the provider sees it now)."""
    return SandboxView.of(await sandboxes.fresh(sandbox_id))


@router.delete("/{sandbox_id}")
async def delete_sandbox(sandbox_id: SandboxIdPath, sandboxes: SandboxesDep) -> SandboxView:
    """Delete a sandbox and its filesystem."""
    return SandboxView.of(await sandboxes.delete(sandbox_id))


@router.post("/{sandbox_id}/stop")
async def stop_sandbox(sandbox_id: SandboxIdPath, sandboxes: SandboxesDep) -> SandboxView:
    """End every process, keep the filesystem."""
    return SandboxView.of(await sandboxes.stop(sandbox_id))


@router.post("/{sandbox_id}/start")
async def start_sandbox(sandbox_id: SandboxIdPath, sandboxes: SandboxesDep) -> SandboxView:
    """Resume a stopped sandbox."""
    return SandboxView.of(await sandboxes.start(sandbox_id))


@router.get("/{sandbox_id}/events")
async def sandbox_events(sandbox_id: SandboxIdPath, sandboxes: SandboxesDep) -> EventList:
    """What happened to a sandbox, oldest first."""
    return EventList(events=[EventView(**e) for e in await sandboxes.events(sandbox_id)])


@router.post(
    "/{sandbox_id}/exec",
    response_model=ExecResponse,
    responses={
        200: {
            "description": "the outcome as JSON, or (`stream`, or `Accept: text/event-stream`) server-sent "
            "events: `stdout`/`stderr` chunks as produced (`{data, encoding: utf-8|base64}`), then one `exit` "
            "(`{exit_code, timed_out, truncated, duration_ms}`) or one `error` (the error envelope); with "
            f"`Accept: {FRAMES_MEDIA_TYPE}` the same as length-prefixed frames (8-byte header: kind 1 stdout, "
            "2 stderr, 3 exit, 4 error; three zero bytes; the payload's length, big-endian)",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}},
                FRAMES_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def exec_in_sandbox(
    sandbox_id: SandboxIdPath,
    body: ExecRequest,
    request: Request,
    sandboxes: SandboxesDep,
    encoding: EncodingQuery = None,
) -> ExecResponse | StreamingResponse:
    """Run a command with a hard timeout; a non-zero exit is a result, not an error.

    Streamed, the answer starts at once; a client that disconnects kills the command.
    """
    output_encoding = parse_encoding(encoding)
    accept = request.headers.get("accept", "")
    if FRAMES_MEDIA_TYPE in accept:
        events = await sandboxes.exec_stream(sandbox_id, body)
        framed = until_disconnected(request, exec_frames(events))
        return StreamingResponse(framed, media_type=FRAMES_MEDIA_TYPE, headers=SSE_HEADERS)
    if body.stream or "text/event-stream" in accept:
        events = await sandboxes.exec_stream(sandbox_id, body)
        frames = until_disconnected(request, exec_sse(events, output_encoding))
        return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    return ExecResponse.of(await sandboxes.exec(sandbox_id, body))


@router.put("/{sandbox_id}/files", status_code=204, openapi_extra=OCTET_STREAM_BODY)
async def upload_file(
    sandbox_id: SandboxIdPath, path: PathQuery, request: Request, files: FilesDep, services: ServicesDep
) -> Response:
    """Write one file from the raw request body (streamed, atomic; parents created)."""
    await files.write(sandbox_id, path, request.stream(), limit=services.settings.max_upload_bytes)
    return Response(status_code=204)


@router.get("/{sandbox_id}/files", response_class=StreamingResponse, responses=OCTET_STREAM_ANSWER)
async def download_file(sandbox_id: SandboxIdPath, path: PathQuery, files: FilesDep) -> StreamingResponse:
    """Read one regular file as raw bytes (streamed)."""
    return StreamingResponse(await files.read(sandbox_id, path), media_type="application/octet-stream")
