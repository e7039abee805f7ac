"""The session env file (written, and loaded by real shells) and how a claim's env vars are sorted."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_runtime import sessionenv
from sandbox_runtime.sessionenv import ProviderCatalogue, plan

TRICKY = 'it\'s "quoted" $HOME `id` \\ and\na second line'


def _shell(argv: list[str], env_file: Path, **env: str) -> str:
    """Run ``argv`` as the env server would spawn it: its env names the file in BASH_ENV and ENV."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent), **sessionenv.shell_hooks(env_file, {}), **env}
    return subprocess.run(argv, env=base, capture_output=True, text=True, timeout=30, check=True).stdout


def test_the_file_is_private_and_exports_every_value_verbatim(tmp_path: Path) -> None:
    env_file = tmp_path / "run" / "session.env"
    sessionenv.write(env_file, {"TRICKY": TRICKY, "PLAIN": "v", "not-a-name": "x"})
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "not-a-name" not in env_file.read_text()
    probe = 'printf "%s|%s" "$TRICKY" "$PLAIN"'
    assert _shell(["bash", "-c", probe], env_file) == f"{TRICKY}|v"  # non-interactive (the bash tool)
    assert _shell(["bash", "-l", "-c", probe], env_file) == f"{TRICKY}|v"  # login (the shell endpoint)
    if shutil.which("dash"):
        assert _shell(["dash", "-i", "-c", probe], env_file) == f"{TRICKY}|v"  # interactive sh: ENV
    # Rewritten at the claim: the file is replaced, never half-written.
    sessionenv.write(env_file, {"PLAIN": "w"})
    assert _shell(["bash", "-c", probe], env_file) == "|w"
    assert [p.name for p in env_file.parent.iterdir()] == ["session.env"]


def test_nested_shells_keep_what_their_parents_set_and_never_see_the_password(tmp_path: Path) -> None:
    env_file = tmp_path / "session.env"
    sessionenv.write(env_file, {"FOO": "session"})
    inner = 'echo "$FOO ${OPENCODE_SERVER_PASSWORD-unset}"'
    assert _shell(["bash", "-c", f"FOO=mine bash -c {shlex.quote(inner)}"], env_file).strip() == "mine unset"
    assert _shell(["bash", "-c", inner], env_file, OPENCODE_SERVER_PASSWORD="pw").strip() == "session unset"


def test_the_env_servers_own_shell_hooks_leave_a_users_choice_alone(tmp_path: Path) -> None:
    path = tmp_path / "session.env"
    assert sessionenv.shell_hooks(path, {}) == {"BASH_ENV": str(path), "ENV": str(path)}
    assert sessionenv.shell_hooks(path, {"BASH_ENV": "/mine"}) == {"ENV": str(path)}


def test_profile_hooks_load_the_file_in_interactive_shells_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("alias ll='ls -l'")  # no trailing newline
    env_file = tmp_path / "session.env"
    sessionenv.write(env_file, {"FOO": "session"})
    assert sessionenv.install_profile_hooks(home, env_file) == [home / ".bashrc", home / ".profile"]
    assert sessionenv.install_profile_hooks(home, env_file) == [], "idempotent"
    assert (home / ".bashrc").read_text().startswith("alias ll='ls -l'\n")
    base = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    out = subprocess.run(["bash", "-i", "-c", "echo $FOO"], env=base, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "session"
    assert sessionenv.install_profile_hooks(tmp_path / "absent", env_file) == []


def test_changed_names_are_the_added_and_the_different() -> None:
    assert sessionenv.changed({"A": "1", "B": "2"}, {"A": "1", "B": "3", "C": "4"}) == {"B": "3", "C": "4"}


CATALOGUE = ProviderCatalogue(
    {
        "anthropic": ("ANTHROPIC_API_KEY",),
        "minimax": ("MINIMAX_API_KEY",),
        "minimax-cn": ("MINIMAX_API_KEY",),
        "amazon-bedrock": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"),
    }
)


def test_provider_keys_go_through_the_auth_api_and_everything_to_the_shells() -> None:
    env = {"ANTHROPIC_API_KEY": "k1", "MINIMAX_API_KEY": "k2", "DATABASE_URL": "pg://x", "AWS_REGION": "eu"}
    result = plan(env, CATALOGUE, "anthropic")
    assert result.provider_keys == {"anthropic": "k1", "minimax": "k2", "minimax-cn": "k2"}
    assert result.shell == env
    assert result.restart == (), "AWS_* only matter to OpenCode when the session uses bedrock"


@pytest.mark.parametrize(
    ("env", "restart"),
    [
        ({"AWS_REGION": "eu", "AWS_ACCESS_KEY_ID": "a", "OTHER": "1"}, ("AWS_ACCESS_KEY_ID", "AWS_REGION")),
        ({"OPENCODE_PERMISSION": "{}", "HTTPS_PROXY": "http://p", "XDG_CONFIG_HOME": "/c"}, None),
        ({"my-var": "1", "NODE_OPTIONS": "--x", "SHELL": "/bin/zsh"}, None),
    ],
)
def test_what_only_a_restart_applies(env: dict[str, str], restart: tuple[str, ...] | None) -> None:
    result = plan(env, CATALOGUE, "amazon-bedrock")
    expected = restart if restart is not None else tuple(sorted(env))
    assert result.restart == expected


def test_without_a_catalogue_any_env_means_a_restart() -> None:
    result = plan({"ANTHROPIC_API_KEY": "k", "FOO": "1"}, None, "anthropic")
    assert result.restart == ("ANTHROPIC_API_KEY", "FOO") and result.provider_keys == {}


def test_the_catalogue_is_read_from_opencodes_integrations() -> None:
    payload = {
        "location": {},
        "data": [
            {"id": "anthropic", "methods": [{"type": "key"}, {"type": "env", "names": ["ANTHROPIC_API_KEY"]}]},
            {"id": "oauth-only", "methods": [{"type": "oauth"}]},
            {"id": 7, "methods": []},
            "junk",
        ],
    }
    catalogue = ProviderCatalogue.from_integrations(payload)
    assert catalogue == ProviderCatalogue({"anthropic": ("ANTHROPIC_API_KEY",)})
    assert ProviderCatalogue.from_integrations({"healthy": True}) is None
    assert ProviderCatalogue.from_integrations([]) is None
