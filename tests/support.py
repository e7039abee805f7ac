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
