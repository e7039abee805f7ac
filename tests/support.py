"""Helpers shared by the test suite (imported, not a plugin)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from app.provider_settings import LocalSettings

STRICT = os.environ.get("SANDBOX_TEST_STRICT", "") not in ("", "0", "false")


def missing_component(reason: str) -> None:
    """Skip locally when a real component is unavailable; fail under SANDBOX_TEST_STRICT=1."""
    if STRICT:
        pytest.fail(f"required component unavailable (SANDBOX_TEST_STRICT=1): {reason}", pytrace=False)
    pytest.skip(reason)


def private_uid_range() -> dict[str, int]:
    """``LocalSettings`` fields giving local sandboxes a host uid range of their own.

    Under root every local sandbox runs as its own host uid and stopping one
    sweeps that uid's processes; two providers (data dirs) drawing from the same
    range could sweep each other's sandboxes, so each test provider gets its own.
    """
    import random

    return {"uid_base": random.randrange(1_000_000, 100_000_000, 1000), "uid_count": 1000}


def private_local(**overrides: Any) -> LocalSettings:
    """``LocalSettings`` (the environment's, plus ``overrides``) with a uid range of their own."""
    return LocalSettings(**{**private_uid_range(), **overrides})
