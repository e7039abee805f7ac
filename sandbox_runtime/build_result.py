"""The build-mode result line: printed by the supervisor, parsed by the service.

Re-exported by :mod:`sandbox_runtime.contract`, where both sides import it from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

BUILD_COMPLETE_MARKER = "SANDBOX_BUILD_COMPLETE"
BUILD_FAILED_MARKER = "SANDBOX_BUILD_FAILED"


class BuildResult(BaseModel):
    """A build-mode outcome parsed from the supervisor's stdout."""

    model_config = ConfigDict(extra="ignore")

    success: bool
    head_sha: str | None = None
    branch: str | None = None
    duration_seconds: float | None = None
    error: str | None = None


def format_build_line(marker: str, payload: Mapping[str, Any]) -> str:
    """Render one result line (marker, space, compact JSON, newline)."""
    return f"{marker} {json.dumps(dict(payload), separators=(',', ':'))}\n"


def parse_build_result(stdout: str) -> BuildResult | None:
    """Find the last build result line in ``stdout``; None when the build printed none."""
    for line in reversed(stdout.splitlines()):
        for marker, success in ((BUILD_COMPLETE_MARKER, True), (BUILD_FAILED_MARKER, False)):
            if line.startswith(marker + " "):
                try:
                    payload = json.loads(line[len(marker) + 1 :])
                except ValueError:
                    continue
                if isinstance(payload, dict):
                    return BuildResult(success=success, **payload)
    return None
