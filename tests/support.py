"""Helpers shared by the test suite (imported, not a plugin)."""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("SANDBOX_TEST_STRICT", "") not in ("", "0", "false")


def missing_component(reason: str) -> None:
    """Skip locally when a real component is unavailable; fail under SANDBOX_TEST_STRICT=1."""
    if STRICT:
        pytest.fail(f"required component unavailable (SANDBOX_TEST_STRICT=1): {reason}", pytrace=False)
    pytest.skip(reason)


def private_uid_range() -> dict[str, int]:
    """Settings giving local sandboxes a host uid range of their own.

    Under root every local sandbox runs as its own host uid and stopping one
    sweeps that uid's processes; two providers (data dirs) drawing from the same
    range could sweep each other's sandboxes, so each test provider gets its own.
    """
    import random

    return {"local_uid_base": random.randrange(1_000_000, 100_000_000, 1000), "local_uid_count": 1000}
