"""Commit identities: the configured fallback and what a prompt's author names."""

from __future__ import annotations

import pytest

from sandbox_runtime.config import ConfigError, RuntimeConfig
from sandbox_runtime.identity import GitIdentity
from sandbox_runtime.sandbox_env import build_sandbox_env


def test_parse_and_render() -> None:
    identity = GitIdentity.parse("OpenInspect <open-inspect@noreply.github.com>")
    assert identity == GitIdentity("OpenInspect", "open-inspect@noreply.github.com")
    assert str(identity) == "OpenInspect <open-inspect@noreply.github.com>"
    assert GitIdentity.parse("  Ada  Lovelace <ada@example.com> ").name == "Ada  Lovelace"
    for bad in ("no email", "<a@b>", "A <>", "A <a@b> trailing", "A\nB <a@b>"):
        with pytest.raises(ValueError):
            GitIdentity.parse(bad)


def test_an_author_names_an_identity_only_with_both_parts() -> None:
    assert GitIdentity.of("Ada", "ada@example.com") == GitIdentity("Ada", "ada@example.com")
    assert GitIdentity.of("Ada", None) is None and GitIdentity.of(None, "a@b") is None
    assert GitIdentity.of("Ada\nEvil", "ada@example.com") is None


def test_the_fallback_is_configurable() -> None:
    env = build_sandbox_env(sandbox_id="s", repo_owner="o", repo_name="n")
    assert str(RuntimeConfig.from_env(env).git_fallback_identity) == "OpenInspect <open-inspect@noreply.github.com>"
    env["GIT_FALLBACK_IDENTITY"] = "Bot <bot@example.com>"
    assert RuntimeConfig.from_env(env).git_fallback_identity == GitIdentity("Bot", "bot@example.com")
    env["GIT_FALLBACK_IDENTITY"] = "Bot"
    with pytest.raises(ConfigError, match="GIT_FALLBACK_IDENTITY"):
        RuntimeConfig.from_env(env)
