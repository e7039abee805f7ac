"""The Daytona-compatible API: code written for the ``daytona`` SDK runs unchanged on our sandboxes.

``/daytona/api`` is Daytona's control plane, ``/daytona/toolbox/{id}`` its
toolbox (announced by ``GET /daytona/api/sandbox/{id}/toolbox-proxy-url``).
Bearer keys of their own (``auth``); errors in Daytona's shape
(``app.api.errors``); everything is a thin translation onto our services.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.daytona import sandboxes, snapshots, toolbox_files, toolbox_git, toolbox_info, toolbox_process

ROUTERS: tuple[APIRouter, ...] = tuple(
    module.router for module in (sandboxes, snapshots, toolbox_process, toolbox_files, toolbox_git, toolbox_info)
)
