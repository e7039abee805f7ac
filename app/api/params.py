"""Path parameters shared by the routers, with the patterns the OpenAPI document states."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

#: A sandbox by its id or its provider object id (ids of every provider fit this).
SandboxIdPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$", description="sandbox id or provider object id")
]
SnapshotIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$", description="snapshot id")]
#: The raw body of a file upload (streamed; not JSON).
OCTET_STREAM_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
#: A raw byte answer.
OCTET_STREAM_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the file's bytes",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
