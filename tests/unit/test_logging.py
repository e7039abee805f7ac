"""Secrets never reach the logs."""

from __future__ import annotations

import io
import json

from app.logging import MASK, Redactor, configure_logging, get_logger


def test_redactor_masks_known_values_keys_and_tokens() -> None:
    redactor = Redactor(["supersecretvalue123"])
    event = {
        "event": "calling with supersecretvalue123 and Bearer 1700000000000.deadbeef",
        "github_token": "ghs_abc",
        "S3_SECRET_KEY": "x",
        "headers": {"Authorization": "Bearer abc", "X-Other": "ok"},
        "url": "https://user:pass@example.invalid/repo.git",
        "argv": ["git", "-c", "x=supersecretvalue123"],
        "signature": "t=1,v1=" + "a" * 64,
    }
    out = redactor(None, "info", dict(event))
    text = json.dumps(out)
    assert "supersecretvalue123" not in text
    assert "ghs_abc" not in text
    assert "deadbeef" not in text
    assert "user:pass" not in text
    assert out["headers"]["X-Other"] == "ok"
    assert out["github_token"] == MASK


def test_configured_logger_is_json_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", ["topsecretvalue-xyz"], stream=stream)
    get_logger("t").info("hello topsecretvalue-xyz", api_key="k1", sandbox_id="s1")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["sandbox_id"] == "s1"
    assert "topsecretvalue-xyz" not in stream.getvalue()
    assert line["api_key"] == MASK
