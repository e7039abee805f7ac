"""Preparing the repository for each boot mode, and pushing the agent's work.

=================  ======================================================================
fresh / build      shallow clone (``--depth``) of the session branch (else REPO_BRANCH,
                   else the remote default); an existing checkout is only fetched, never
                   re-cloned, so a supervisor restart cannot destroy the agent's work
repo_image         the image holds the checkout: fetch the branch and hard-reset to its head
snapshot_restore   the snapshot holds the agent's work: fetch only, never touch the tree
=================  ======================================================================

Fetch failures in ``repo_image`` and ``snapshot_restore`` are logged and tolerated (the
checkout is usable as it is); a clone failure is fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sandbox_runtime.contract import BootMode
from sandbox_runtime.gitcmd import Git, GitError
from sandbox_runtime.identity import GitIdentity
from sandbox_runtime.jsonlog import JsonLogger


@dataclass(frozen=True)
class RepoState:
    """What the boot produced: the checked-out commit and branch."""

    head_sha: str
    branch: str | None


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """Split credentials off an http(s) URL: (clean url, username, password)."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url, None, None
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), parts.username, parts.password


class Repository:
    """One checkout at ``repo_dir`` whose ``origin`` is ``clone_url`` (credential-free)."""

    def __init__(self, repo_dir: Path, clone_url: str, *, git: Git, depth: int, log: JsonLogger) -> None:
        self.repo_dir = repo_dir
        self.clone_url = clone_url
        self._git = git
        self._depth = depth
        self._log = log

    @property
    def exists(self) -> bool:
        """True when ``repo_dir`` holds a git checkout."""
        return (self.repo_dir / ".git").exists()

    def _depth_args(self) -> list[str]:
        return [f"--depth={self._depth}"] if self._depth > 0 else []

    async def prepare(self, mode: BootMode, branch: str | None) -> RepoState:
        """Bring the checkout into the state ``mode`` requires.

        Raises:
            GitError: cloning failed (fresh/build), or no checkout exists and cloning failed.
        """
        if mode in (BootMode.FRESH, BootMode.BUILD) or not self.exists:
            if self.exists:
                self._log.warning("repo.exists_not_recloned", path=str(self.repo_dir), mode=mode.value)
                await self.fetch(branch, reset=False)
            else:
                if mode in (BootMode.REPO_IMAGE, BootMode.SNAPSHOT_RESTORE):
                    self._log.warning("repo.missing_cloning", path=str(self.repo_dir), mode=mode.value)
                await self.clone(branch)
        elif mode is BootMode.REPO_IMAGE:
            await self.fetch(branch, reset=True)
        else:
            await self.fetch(branch, reset=False)
        return await self.state()

    async def clone(self, branch: str | None) -> None:
        """Shallow-clone ``clone_url`` into ``repo_dir``.

        Raises:
            GitError: the clone failed or timed out.
        """
        self.repo_dir.parent.mkdir(parents=True, exist_ok=True)
        args = ["clone", *self._depth_args(), "--no-tags"]
        if branch:
            args += ["--branch", branch]
        self._log.info("repo.clone", url=self.clone_url, branch=branch, depth=self._depth)
        await self._git.run(*args, "--", self.clone_url, str(self.repo_dir))

    async def fetch(self, branch: str | None, *, reset: bool) -> bool:
        """Fetch ``branch`` (default: the checked-out one) into ``origin/<branch>``.

        With ``reset`` the working tree is forced to the fetched head; without it the
        tree and index are untouched. Returns False (after logging) when fetching failed.
        """
        await self._git.run("remote", "set-url", "origin", self.clone_url, cwd=self.repo_dir)
        branch = branch or await self.current_branch()
        source = f"refs/heads/{branch}" if branch else "HEAD"
        target = f"refs/remotes/origin/{branch}" if branch else "refs/remotes/origin/HEAD"
        try:
            await self._git.run(
                "fetch", *self._depth_args(), "--no-tags", "origin", f"+{source}:{target}", cwd=self.repo_dir
            )
        except GitError as exc:
            self._log.warning("repo.fetch_failed", error=str(exc), branch=branch, reset=reset)
            return False
        if reset:
            if branch:
                await self._git.run("checkout", "--force", "-B", branch, target, cwd=self.repo_dir)
            else:
                await self._git.run("reset", "--hard", target, cwd=self.repo_dir)
        self._log.info("repo.fetched", branch=branch, reset=reset)
        return True

    async def switch_branch(self, branch: str) -> bool:
        """Check out ``branch`` after a warm-pool claim, fetching it first; False if already on it.

        Raises:
            GitError: the branch cannot be fetched or checked out.
        """
        if await self.current_branch() == branch:
            return False
        await self._git.run(
            "fetch", *self._depth_args(), "--no-tags", "origin",
            f"+refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=self.repo_dir,
        )  # fmt: skip
        await self._git.run("checkout", "-B", branch, f"refs/remotes/origin/{branch}", cwd=self.repo_dir)
        return True

    async def check_out_commit(self, sha: str, branch: str | None) -> None:
        """Set ``branch`` (default: the checked-out one; else a detached HEAD) to commit ``sha``.

        A shallow clone may not hold it: the commit itself is fetched first (servers
        answer wants of reachable commits), then the whole history.

        Raises:
            GitError: the commit cannot be fetched or checked out.
        """
        if not await self._has_commit(sha):
            try:
                await self._git.run("fetch", *self._depth_args(), "--no-tags", "origin", sha, cwd=self.repo_dir)
            except GitError as exc:
                self._log.info("repo.fetch_sha_refused", sha=sha, error=str(exc))
            if not await self._has_commit(sha):  # the checkout below names it when still missing
                unshallow = ["--unshallow"] if await self._is_shallow() else []
                await self._git.run("fetch", *unshallow, "--no-tags", "origin", cwd=self.repo_dir)
        branch = branch or await self.current_branch()
        if branch:
            await self._git.run("checkout", "--force", "-B", branch, sha, cwd=self.repo_dir)
        else:
            await self._git.run("checkout", "--force", "--detach", sha, cwd=self.repo_dir)
        self._log.info("repo.base_sha", sha=sha, branch=branch)

    async def _has_commit(self, sha: str) -> bool:
        found = await self._git.run("cat-file", "-e", f"{sha}^{{commit}}", cwd=self.repo_dir, check=False)
        return found.returncode == 0

    async def _is_shallow(self) -> bool:
        return (await self._git.output("rev-parse", "--is-shallow-repository", cwd=self.repo_dir)) == "true"

    async def identity(self) -> GitIdentity | None:
        """The commit identity in the repository's own config (None when it has none)."""
        result = await self._git.run(
            "config", "--local", "--get-regexp", r"^user\.(name|email)$", cwd=self.repo_dir, check=False
        )
        found = dict(line.partition(" ")[::2] for line in result.stdout.decode(errors="replace").splitlines())
        return GitIdentity.of(found.get("user.name"), found.get("user.email"))

    async def set_identity(self, identity: GitIdentity) -> None:
        """Make ``identity`` the author and committer of every commit in the repository.

        Raises:
            GitError: the config cannot be written.
        """
        await self._git.run("config", "--local", "user.name", identity.name, cwd=self.repo_dir)
        await self._git.run("config", "--local", "user.email", identity.email, cwd=self.repo_dir)

    async def state(self) -> RepoState:
        """The checked-out commit and branch (None when detached), from one git process."""
        out = await self._git.output("rev-parse", "HEAD", "--abbrev-ref", "HEAD", cwd=self.repo_dir)
        head_sha, _, branch = out.partition("\n")
        return RepoState(head_sha=head_sha, branch=branch if branch and branch != "HEAD" else None)

    async def head_sha(self) -> str:
        """The commit checked out."""
        return await self._git.output("rev-parse", "HEAD", cwd=self.repo_dir)

    async def current_branch(self) -> str | None:
        """The checked-out branch, None when detached."""
        result = await self._git.run("symbolic-ref", "--quiet", "--short", "HEAD", cwd=self.repo_dir, check=False)
        name = result.stdout.decode().strip()
        return name if result.ok and name else None

    async def push(self, *, branch: str | None, refspec: str | None = None, force: bool = False,
                   remote_url: str | None = None, git: Git | None = None) -> str:  # fmt: skip
        """Push ``refspec`` (default ``HEAD:refs/heads/<branch>``) to origin or ``remote_url``.

        ``git`` overrides the credentials (a push token newer than the clone token).
        Returns the pushed commit.

        Raises:
            ValueError: neither a branch nor a refspec was given.
            GitError: the push failed (message redacted).
        """
        if not refspec:
            if not branch:
                branch = await self.current_branch()
            if not branch:
                raise ValueError("push needs a branch name or a refspec")
            refspec = f"HEAD:refs/heads/{branch}"
        runner = git or self._git
        args = ["push"]
        if force:
            args.append("--force")
        await runner.run(*args, "--", remote_url or "origin", refspec, cwd=self.repo_dir)
        return await self.head_sha()
