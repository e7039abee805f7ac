"""FastAPI dependencies of the Daytona-compatible API: its services, and where its toolbox is."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.deps import get_services
from app.services.daytona_sandboxes import DaytonaSandboxes
from app.services.daytona_sessions import DaytonaSessions
from app.services.file_tree import FileTree

#: Where the toolbox routes live; the SDK appends ``/{sandboxId}/<operation>``.
TOOLBOX_PATH = "/daytona/toolbox"


def get_daytona_sandboxes(request: Request) -> DaytonaSandboxes:
    return get_services(request).daytona_sandboxes


def get_daytona_sessions(request: Request) -> DaytonaSessions:
    return get_services(request).daytona_sessions


def get_file_tree(request: Request) -> FileTree:
    return get_services(request).file_tree


def toolbox_url(request: Request) -> str:
    """The toolbox base URL as the caller reached this service (its host and scheme)."""
    return str(request.base_url).rstrip("/") + TOOLBOX_PATH


DaytonaSandboxesDep = Annotated[DaytonaSandboxes, Depends(get_daytona_sandboxes)]
DaytonaSessionsDep = Annotated[DaytonaSessions, Depends(get_daytona_sessions)]
FileTreeDep = Annotated[FileTree, Depends(get_file_tree)]
ToolboxUrl = Annotated[str, Depends(toolbox_url)]
