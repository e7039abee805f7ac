"""Git invocation: the token travels in the environment only, never in argv."""

from __future__ import annotations

import subprocess

from sandbox_runtime.gitcmd import CREDENTIAL_HELPER, Git, GitCredentials
from sandbox_runtime.repo import strip_userinfo


def test_token_is_in_the_env_not_in_argv() -> None:
    git = Git(GitCredentials("x-access-token", "ghs_secret_value"), timeout=5, base_env={"GIT_ASKPASS": "/x"})
    argv = git.argv(["fetch", "origin"])
    assert "ghs_secret_value" not in " ".join(argv)
    assert f"credential.helper={CREDENTIAL_HELPER}" in argv and argv.index("credential.helper=") < len(argv)
    env = git.env()
    assert env["VCS_CLONE_TOKEN"] == "ghs_secret_value" and env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_ASKPASS" not in env
    assert "ghs_secret_value" not in repr(GitCredentials("u", "ghs_secret_value"))


def test_the_helper_answers_get_from_its_environment_only() -> None:
    script = CREDENTIAL_HELPER.removeprefix("!") + ' "$@"'  # how git runs a "!" helper
    env = {"PATH": "/usr/bin:/bin", "VCS_CLONE_USERNAME": "u", "VCS_CLONE_TOKEN": "t0ken"}
    get = subprocess.run(["sh", "-c", script, "helper", "get"], env=env, capture_output=True, text=True, check=True)
    assert get.stdout == "username=u\npassword=t0ken\n"
    store = subprocess.run(["sh", "-c", script, "helper", "store"], env=env, capture_output=True, text=True)
    assert store.returncode == 0 and store.stdout == ""


def test_no_helper_without_a_token() -> None:
    assert not any("credential.helper=!" in a for a in Git(GitCredentials("u", ""), timeout=5).argv(["clone"]))


def test_strip_userinfo() -> None:
    assert strip_userinfo("https://u:p@host:8443/o/r.git") == ("https://host:8443/o/r.git", "u", "p")
    assert strip_userinfo("https://host/o/r.git") == ("https://host/o/r.git", None, None)
