"""Inbound commands: what control planes send parses, whatever its vintage or extras."""

from __future__ import annotations

import json
from typing import Any

from sandbox_runtime.bridge.protocol import PromptCommand, parse_command
from sandbox_runtime.identity import GitIdentity


def _prompt(**fields: Any) -> PromptCommand:
    command = parse_command(json.dumps({"type": "prompt", "messageId": "m1", "content": "hi", **fields}))
    assert isinstance(command, PromptCommand)
    return command


def test_both_author_spellings_name_the_identity_the_newer_first() -> None:
    scm = {"userId": "u1", "scmName": "Ada", "scmEmail": "ada@example.com"}
    assert _prompt(author=scm).author.identity() == GitIdentity("Ada", "ada@example.com")  # type: ignore[union-attr]
    github = {"githubName": "Grace", "githubEmail": "grace@example.com"}
    assert _prompt(author=github).author.identity() == GitIdentity("Grace", "grace@example.com")  # type: ignore[union-attr]
    both = {**github, "scmName": "Ada", "scmEmail": "ada@example.com"}
    assert _prompt(author=both).author.identity() == GitIdentity("Ada", "ada@example.com")  # type: ignore[union-attr]
    assert _prompt(author={"userId": "u1", "scmName": "Ada"}).author.identity() is None  # type: ignore[union-attr]


def test_nothing_the_control_plane_adds_or_garbles_drops_the_prompt() -> None:
    command = _prompt(
        model=7,
        reasoningEffort=["high"],
        author="someone",
        attachments={"not": "a list"},
        sandboxSettings={"cpuCores": 2},
        someFutureField=True,
    )
    assert command.model is None and command.reasoning_effort is None and command.author is None
    assert command.attachments == []
    mixed = _prompt(reasoningEffort="high", attachments=[{"name": "a.png", "uploadId": "u1"}, "junk", 3, {"url": 5}])
    assert mixed.reasoning_effort == "high"
    assert [(a.name, a.upload_id, a.url) for a in mixed.attachments] == [("a.png", "u1", None), (None, None, None)]
