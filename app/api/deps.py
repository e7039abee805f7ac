"""FastAPI dependencies: the app's services, typed for route signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.services.builds import BuildService
from app.services.container import Services
from app.services.files import FileService
from app.services.idempotency import IdempotencyService
from app.services.launcher import SandboxLauncher
from app.services.pools import PoolService
from app.services.previews import PreviewService
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService
from app.services.snapshots import SnapshotService


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_sandboxes(request: Request) -> SandboxService:
    return get_services(request).sandboxes


def get_snapshots(request: Request) -> SnapshotService:
    return get_services(request).snapshots


def get_pools(request: Request) -> PoolService:
    return get_services(request).pools


def get_builds(request: Request) -> BuildService:
    return get_services(request).builds


def get_repo_images(request: Request) -> RepoImageService:
    return get_services(request).repo_images


def get_launcher(request: Request) -> SandboxLauncher:
    return get_services(request).launcher


def get_files(request: Request) -> FileService:
    return get_services(request).files


def get_previews(request: Request) -> PreviewService:
    return get_services(request).previews


def get_idempotency(request: Request) -> IdempotencyService:
    return get_services(request).idempotency


ServicesDep = Annotated[Services, Depends(get_services)]
SandboxesDep = Annotated[SandboxService, Depends(get_sandboxes)]
SnapshotsDep = Annotated[SnapshotService, Depends(get_snapshots)]
PoolsDep = Annotated[PoolService, Depends(get_pools)]
BuildsDep = Annotated[BuildService, Depends(get_builds)]
RepoImagesDep = Annotated[RepoImageService, Depends(get_repo_images)]
LauncherDep = Annotated[SandboxLauncher, Depends(get_launcher)]
IdempotencyDep = Annotated[IdempotencyService, Depends(get_idempotency)]
FilesDep = Annotated[FileService, Depends(get_files)]
PreviewsDep = Annotated[PreviewService, Depends(get_previews)]
