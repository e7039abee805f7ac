"""FastAPI dependencies: the app's services, typed for route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services.container import Services
from app.services.sandboxes import SandboxService
from app.services.snapshots import SnapshotService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_sandboxes(request: Request) -> SandboxService:
    return get_services(request).sandboxes


def get_snapshots(request: Request) -> SnapshotService:
    return get_services(request).snapshots


ServicesDep = Annotated[Services, Depends(get_services)]
SandboxesDep = Annotated[SandboxService, Depends(get_sandboxes)]
SnapshotsDep = Annotated[SnapshotService, Depends(get_snapshots)]
