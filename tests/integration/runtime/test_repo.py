"""Repository preparation per boot mode against a real git smart-HTTP server with basic auth."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_runtime.contract import BootMode
from sandbox_runtime.gitcmd import Git, GitCredentials, GitError
from sandbox_runtime.hooks import run_hook
from sandbox_runtime.jsonlog import JsonLogger
from sandbox_runtime.repo import Repository
from tests.fixtures.runtime import GIT_TOKEN, GIT_USER, GitHttpServer, git


def _repo(tmp_path: Path, server: GitHttpServer, *, token: str = GIT_TOKEN, depth: int = 1) -> Repository:
    url = server.url_template.format(host="ignored", owner="acme", name="widget")
    runner = Git(GitCredentials(GIT_USER, token), timeout=60, base_env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    return Repository(tmp_path / "workspace" / "widget", url, git=runner, depth=depth, log=JsonLogger("test"))


@pytest.fixture
def upstream(git_server: GitHttpServer) -> GitHttpServer:
    git_server.create_repo("acme", "widget", {"a.txt": "1\n"})
    git_server.commit("acme", "widget", {"a.txt": "2\n"})
    git_server.commit("acme", "widget", {"b.txt": "dev\n"}, branch="dev")
    return git_server


async def test_fresh_clone_is_shallow_on_the_session_branch_without_credentials_on_disk(
    tmp_path: Path, upstream: GitHttpServer
) -> None:
    repo = _repo(tmp_path, upstream, depth=1)
    state = await repo.prepare(BootMode.FRESH, "dev")
    assert state.branch == "dev" and state.head_sha == upstream.head("acme", "widget", "dev")
    assert git("rev-parse", "--is-shallow-repository", cwd=repo.repo_dir) == "true"
    assert git("rev-list", "--count", "HEAD", cwd=repo.repo_dir) == "1"
    config = (repo.repo_dir / ".git" / "config").read_text()
    assert GIT_TOKEN not in config and GIT_USER not in config
    assert git("remote", "get-url", "origin", cwd=repo.repo_dir) == repo.clone_url


async def test_clone_with_a_wrong_token_fails_loudly_and_redacted(tmp_path: Path, upstream: GitHttpServer) -> None:
    repo = _repo(tmp_path, upstream, token="wrong-token-123456")
    with pytest.raises(GitError) as info:
        await repo.prepare(BootMode.FRESH, "main")
    assert "Authentication failed" in str(info.value)
    assert "wrong-token-123456" not in str(info.value)


async def test_snapshot_restore_fetches_but_keeps_uncommitted_work(tmp_path: Path, upstream: GitHttpServer) -> None:
    repo = _repo(tmp_path, upstream)
    before = await repo.prepare(BootMode.FRESH, "main")
    (repo.repo_dir / "a.txt").write_text("agent edit\n")
    (repo.repo_dir / "new.txt").write_text("untracked\n")
    newer = upstream.commit("acme", "widget", {"c.txt": "3\n"})
    after = await repo.prepare(BootMode.SNAPSHOT_RESTORE, "main")
    assert after.head_sha == before.head_sha
    assert (repo.repo_dir / "a.txt").read_text() == "agent edit\n"
    assert (repo.repo_dir / "new.txt").read_text() == "untracked\n"
    assert git("rev-parse", "refs/remotes/origin/main", cwd=repo.repo_dir) == newer


async def test_repo_image_resets_to_the_branch_head(tmp_path: Path, upstream: GitHttpServer) -> None:
    repo = _repo(tmp_path, upstream)
    await repo.prepare(BootMode.BUILD, "main")
    (repo.repo_dir / "a.txt").write_text("stale build artefact\n")
    newer = upstream.commit("acme", "widget", {"c.txt": "3\n"})
    state = await repo.prepare(BootMode.REPO_IMAGE, "main")
    assert state.head_sha == newer and state.branch == "main"
    assert (repo.repo_dir / "a.txt").read_text() == "2\n"


async def test_restore_tolerates_an_unreachable_remote(tmp_path: Path, upstream: GitHttpServer) -> None:
    repo = _repo(tmp_path, upstream)
    before = await repo.prepare(BootMode.FRESH, "main")
    upstream.stop()
    after = await repo.prepare(BootMode.SNAPSHOT_RESTORE, "main")
    assert after.head_sha == before.head_sha


async def test_fresh_boot_over_an_existing_checkout_does_not_reclone(tmp_path: Path, upstream: GitHttpServer) -> None:
    repo = _repo(tmp_path, upstream)
    await repo.prepare(BootMode.FRESH, "main")
    (repo.repo_dir / "wip.txt").write_text("keep me\n")
    await repo.prepare(BootMode.FRESH, "main")
    assert (repo.repo_dir / "wip.txt").exists()


async def test_base_sha_beyond_a_shallow_clone_is_fetched_and_checked_out(
    tmp_path: Path, upstream: GitHttpServer
) -> None:
    first = git("rev-list", "--max-parents=0", "main", cwd=upstream.bare("acme", "widget"))
    repo = _repo(tmp_path, upstream, depth=1)
    await repo.prepare(BootMode.FRESH, "main")
    assert git("rev-list", "--count", "HEAD", cwd=repo.repo_dir) == "1"  # the first commit is not here
    await repo.check_out_commit(first[:12], None)
    state = await repo.state()
    assert (state.head_sha, state.branch) == (first, "main")  # the branch moved, HEAD is not detached
    assert (repo.repo_dir / "a.txt").read_text() == "1\n"
    with pytest.raises(GitError):
        await repo.check_out_commit("0" * 40, "main")


async def test_hook_timeout_kills_the_hook_and_keeps_the_tail(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    (repo_dir / ".openinspect").mkdir(parents=True)
    (repo_dir / ".openinspect" / "setup.sh").write_text("echo before-sleep\nsleep 30\necho never\n")
    result = await run_hook(repo_dir, "setup", timeout=0.5, env={"PATH": "/usr/bin:/bin"}, log_dir=tmp_path / "logs")
    assert result.ran and result.timed_out and not result.ok
    assert "before-sleep" in result.tail and "never" not in result.tail
    absent = await run_hook(repo_dir, "start", timeout=1, env={"PATH": "/usr/bin:/bin"}, log_dir=tmp_path / "logs")
    assert not absent.ran and absent.ok
