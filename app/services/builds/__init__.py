"""Repo image builds: persisted jobs (``service``) run in a build sandbox whose log is followed (``follower``)."""

from __future__ import annotations

from app.services.builds.follower import BUILD_DIR, build_command
from app.services.builds.service import BUILD_LABEL, BuildService

__all__ = ["BUILD_DIR", "BUILD_LABEL", "BuildService", "build_command"]
