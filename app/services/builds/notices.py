"""What a build tells its caller when it ends: the callback bodies, kinds and idempotency keys.

One key per build and outcome, so queueing a notice again after a restart is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.services.builds.follower import ERROR_TAIL_CHARS
from app.services.callbacks import failure_url
from app.storage.state.builds import BuildRecord

SUCCESS_KEY = "build:{id}:ready"
FAILURE_KEY = "build:{id}:failed"


@dataclass(frozen=True)
class BuildNotice:
    url: str
    body: dict[str, Any]
    kind: str
    idempotency_key: str


def ready_notice(build: BuildRecord, duration_seconds: float) -> BuildNotice | None:
    """``{build_id, provider_image_id, base_sha, build_duration_seconds}`` to ``callback_url``."""
    if not build.callback_url:
        return None
    body = {
        "build_id": build.id,
        "provider_image_id": build.repo_image_id,
        "base_sha": build.base_sha,
        "build_duration_seconds": duration_seconds,
    }
    return BuildNotice(build.callback_url, body, "build_ready", SUCCESS_KEY.format(id=build.id))


def failure_notice(build: BuildRecord, error: str) -> BuildNotice | None:
    """``{build_id, error}`` (the error's tail) to the ``build-failed`` sibling of ``callback_url``."""
    if not build.callback_url:
        return None
    body = {"build_id": build.id, "error": error[-ERROR_TAIL_CHARS:]}
    return BuildNotice(failure_url(build.callback_url), body, "build_failed", FAILURE_KEY.format(id=build.id))
