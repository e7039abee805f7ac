"""Daytona's toolbox file API (``/daytona/toolbox/{id}/files``) over our file services.

Bytes go through ``FileService`` (streamed, atomic uploads), the rest through
``FileTree``. Bulk downloads answer ``multipart/form-data`` as Daytona does, a
missing file being an ``error`` part (the SDK raises
``DaytonaFileNotFoundError`` for it), never a failed request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from app.api.daytona.deps import FileTreeDep
from app.api.daytona.multipart import closing, new_boundary, part_head
from app.api.deps import FilesDep, ServicesDep
from app.api.errors import daytona_body
from app.errors import BadRequest, SandboxControlError
from app.schemas.daytona import FilesDownloadRequest
from app.services.file_tree import FileEntry

router = APIRouter(prefix="/daytona/toolbox/{sandbox_id}/files", tags=["daytona"], include_in_schema=False)

FilePath = Annotated[str, Query(min_length=1, max_length=4096)]
_CHUNK = 64 * 1024
#: Most files one bulk upload may carry (Starlette's form parser refuses more).
MAX_UPLOAD_FILES = 1000


def file_info(entry: FileEntry) -> dict[str, Any]:
    """Daytona's ``FileInfo``."""
    modified = datetime.fromtimestamp(entry.modified, UTC)
    return {
        "name": entry.name,
        "path": entry.path,
        "isDir": entry.is_dir,
        "size": entry.size,
        "mode": entry.mode,
        "permissions": entry.permissions,
        "owner": entry.owner,
        "group": entry.group,
        "modTime": modified.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
        "modifiedAt": modified.isoformat(),
    }


@router.get("/info")
async def get_file_info(sandbox_id: str, path: FilePath, tree: FileTreeDep) -> dict[str, Any]:
    return file_info(await tree.info(sandbox_id, path))


@router.get("")
async def list_files(
    sandbox_id: str, path: FilePath, tree: FileTreeDep, depth: Annotated[int, Query(ge=1, le=32)] = 1
) -> list[dict[str, Any]]:
    return [file_info(entry) for entry in await tree.list(sandbox_id, path, depth)]


@router.post("/folder", status_code=201)
async def create_folder(
    sandbox_id: str, path: FilePath, tree: FileTreeDep, mode: Annotated[str, Query(max_length=4)] = "755"
) -> Response:
    await tree.make_dir(sandbox_id, path, mode)
    return Response(status_code=201)


@router.delete("", status_code=204)
async def delete_file(sandbox_id: str, path: FilePath, tree: FileTreeDep, recursive: bool = False) -> Response:
    await tree.delete(sandbox_id, path, recursive=recursive)
    return Response(status_code=204)


@router.post("/move")
async def move_file(sandbox_id: str, source: FilePath, destination: FilePath, tree: FileTreeDep) -> Response:
    await tree.move(sandbox_id, source, destination)
    return Response(status_code=200)


@router.post("/permissions")
async def set_file_permissions(
    sandbox_id: str,
    path: FilePath,
    tree: FileTreeDep,
    mode: Annotated[str | None, Query(max_length=4)] = None,
    owner: Annotated[str | None, Query(max_length=32)] = None,
    group: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    await tree.set_permissions(sandbox_id, path, mode=mode or None, owner=owner or None, group=group or None)
    return Response(status_code=200)


@router.get("/download")
async def download_file(sandbox_id: str, path: FilePath, files: FilesDep) -> StreamingResponse:
    """One file's raw bytes (streamed)."""
    return StreamingResponse(await files.read(sandbox_id, path), media_type="application/octet-stream")


@router.post("/bulk-download")
async def download_files(
    sandbox_id: str, body: FilesDownloadRequest, request: Request, files: FilesDep
) -> StreamingResponse:
    """Every path as one part, streamed one after the other; a refused path is an ``error`` part."""
    boundary = new_boundary()
    if not body.paths or any(not p for p in body.paths):
        raise BadRequest("paths must name files", field="paths")

    async def parts() -> AsyncIterator[bytes]:
        for path in body.paths:
            try:
                stream = await files.read(sandbox_id, path)
            except SandboxControlError as exc:
                error = daytona_body(
                    exc.status_code, exc.message, method=request.method, path=request.url.path, code=exc.code
                )
                yield part_head(boundary, "error", path, "application/json") + json.dumps(error).encode() + b"\r\n"
                continue
            yield part_head(boundary, "file", path, "application/octet-stream")
            async for chunk in stream:
                yield chunk
            yield b"\r\n"
        yield closing(boundary)

    return StreamingResponse(parts(), media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/bulk-upload", response_model=None)
async def upload_files(sandbox_id: str, request: Request, files: FilesDep, services: ServicesDep) -> JSONResponse:
    """``files[i].path`` + ``files[i].file`` pairs, each written atomically (Starlette spools the parts to disk)."""
    limit = services.settings.max_upload_bytes
    written: list[dict[str, Any]] = []
    async with request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES) as form:
        index = 0
        while f"files[{index}].path" in form or f"files[{index}].file" in form:
            path, upload = form.get(f"files[{index}].path"), form.get(f"files[{index}].file")
            if not isinstance(path, str) or not path or not isinstance(upload, UploadFile):
                raise BadRequest(f"files[{index}] needs a path and a file", field=f"files[{index}]")

            async def chunks(source: UploadFile = upload) -> AsyncIterator[bytes]:
                while chunk := await source.read(_CHUNK):
                    yield chunk

            size = await files.write(sandbox_id, path, chunks(), limit=limit)
            written.append({"path": path, "bytes": size})
            index += 1
    if not written:
        raise BadRequest("no files[0].path / files[0].file in the form", field="files")
    return JSONResponse({"files": written})
