"""``/v1/sandboxes/{id}/processes``: background processes. HTTP translation only."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import get_services
from app.api.params import OCTET_STREAM_BODY, SandboxIdPath
from app.api.sse import SSE_HEADERS, sse_event, sse_json_frame, until_disconnected
from app.errors import BadRequest, PayloadTooLarge
from app.providers.base import OutputChunk, StreamName
from app.schemas.processes import LogStream, ProcessList, ProcessView, SignalRequest, StartProcessRequest
from app.schemas.sandboxes import MAX_STDIN_BYTES
from app.schemas.streams import ChunkEncoder
from app.services.container import Services
from app.services.processes import ProcessService

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/processes", tags=["processes"])

PidPath = Annotated[str, Path(pattern=r"^[a-f0-9]{12}$", description="process handle")]
Offset = Annotated[int, Query(ge=0, le=1 << 62, description="byte offset to start from")]


def get_processes(request: Request) -> ProcessService:
    services: Services = get_services(request)
    return services.processes


ProcessesDep = Annotated[ProcessService, Depends(get_processes)]

#: Raw bytes, optional (an empty body with ``close`` only ends the input).
_STDIN_BODY: dict[str, Any] = {"requestBody": {**OCTET_STREAM_BODY["requestBody"], "required": False}}
_LOG_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "one stream's log as raw bytes, or (follow) server-sent events: `stdout`/`stderr` chunks "
        "(`{data, encoding}`, `id` = `<stdout offset>-<stderr offset>` after the chunk, for `Last-Event-ID`), "
        "then one `exit` event with the process",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}


@router.post("", status_code=201)
async def start_process(sandbox_id: SandboxIdPath, body: StartProcessRequest, processes: ProcessesDep) -> ProcessView:
    """Start a command in the background; answers once it runs, with its handle."""
    return await processes.start(sandbox_id, body)


@router.get("")
async def list_processes(sandbox_id: SandboxIdPath, processes: ProcessesDep) -> ProcessList:
    """The sandbox's processes, running and exited, oldest first."""
    return ProcessList(processes=await processes.list(sandbox_id))


@router.get("/{pid}")
async def get_process(sandbox_id: SandboxIdPath, pid: PidPath, processes: ProcessesDep) -> ProcessView:
    return await processes.get(sandbox_id, pid)


@router.delete("/{pid}", status_code=204)
async def delete_process(sandbox_id: SandboxIdPath, pid: PidPath, processes: ProcessesDep) -> Response:
    """Kill the process if it runs, and forget it (its logs go too)."""
    await processes.delete(sandbox_id, pid)
    return Response(status_code=204)


@router.post("/{pid}/stdin", openapi_extra=_STDIN_BODY)
async def write_stdin(
    sandbox_id: SandboxIdPath,
    pid: PidPath,
    request: Request,
    processes: ProcessesDep,
    close: Annotated[bool, Query(description="end the process's input after these bytes")] = False,
) -> ProcessView:
    """Append the raw body to the process's stdin; ``close`` then ends it (EOF)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_STDIN_BYTES:
            raise PayloadTooLarge(f"stdin of one request is at most {MAX_STDIN_BYTES} bytes")
    return await processes.write_stdin(sandbox_id, pid, bytes(data), close=close)


@router.post("/{pid}/signal")
async def signal_process(
    sandbox_id: SandboxIdPath, pid: PidPath, body: SignalRequest, processes: ProcessesDep
) -> ProcessView:
    """Send TERM, KILL or INT to the process's group."""
    return await processes.signal(sandbox_id, pid, body.signal)


@router.get("/{pid}/logs", response_model=None, response_class=StreamingResponse, responses=_LOG_ANSWER)
async def process_logs(
    sandbox_id: SandboxIdPath,
    pid: PidPath,
    request: Request,
    processes: ProcessesDep,
    stream: Annotated[LogStream, Query(description="which stream, without follow")] = "stdout",
    follow: Annotated[bool, Query(description="both streams as server-sent events until the process exits")] = False,
    offset: Offset = 0,
    stderr_offset: Offset = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The log so far (one stream, from ``offset``), or with ``follow`` both streams as SSE.

    Following starts at ``offset`` (stdout) and ``stderr_offset``, or where the
    ``Last-Event-ID`` of a dropped connection says.
    """
    wants_sse = follow or "text/event-stream" in request.headers.get("accept", "")
    if not wants_sse:
        data = await processes.read_log(sandbox_id, pid, stream, offset)
        return StreamingResponse(data, media_type="application/octet-stream")
    offsets: dict[StreamName, int] = {"stdout": offset, "stderr": stderr_offset}
    if last_event_id:
        offsets = _parse_resume(last_event_id)
    items = await processes.follow(sandbox_id, pid, offsets)
    frames = until_disconnected(request, _log_frames(items, offsets))
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


def _parse_resume(value: str) -> dict[StreamName, int]:
    out, _, err = value.strip().partition("-")
    if not (out.isdigit() and err.isdigit()):
        raise BadRequest("Last-Event-ID must be '<stdout offset>-<stderr offset>'", field="Last-Event-ID")
    return {"stdout": int(out), "stderr": int(err)}


async def _log_frames(
    items: AsyncGenerator[OutputChunk | ProcessView, None], offsets: dict[StreamName, int]
) -> AsyncGenerator[bytes, None]:
    encoders: dict[StreamName, ChunkEncoder] = {"stdout": ChunkEncoder(), "stderr": ChunkEncoder()}
    position = dict(offsets)
    try:
        async for item in items:
            if isinstance(item, OutputChunk):
                position[item.stream] += len(item.data)
                event = encoders[item.stream].encode(item.data)
                if event is not None:
                    # The id counts bytes sent whole: a held partial character is re-sent on resume.
                    resume = {**position, item.stream: position[item.stream] - encoders[item.stream].held}
                    resume_id = f"{resume['stdout']}-{resume['stderr']}"
                    yield sse_json_frame(item.stream, event.model_dump(), event_id=resume_id)
                continue
            for name, encoder in encoders.items():
                tail = encoder.flush()
                if tail is not None:
                    yield sse_event(tail.model_dump_json(), event=name).encode()
            yield sse_event(item.model_dump_json(), event="exit").encode()
    finally:
        await items.aclose()
