"""Daytona's toolbox git API, the two calls agents make most: ``clone`` and ``status``.

Both run ``git`` in the sandbox (it must be installed there). Clone
credentials reach git through a credential helper reading the environment,
never the command line; a failed clone is a 400 quoting git.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import SandboxesDep
from app.errors import BadRequest
from app.schemas.daytona import GitCloneRequest, exec_request
from app.services.sandboxes import resolve_sandbox_path

router = APIRouter(prefix="/daytona/toolbox/{sandbox_id}/git", tags=["daytona"], include_in_schema=False)

CLONE_TIMEOUT = 600.0
#: Answers git's credential questions from ``GIT_USERNAME`` / ``GIT_PASSWORD``.
_HELPER = "credential.helper=!f() { echo username=$GIT_USERNAME; echo password=$GIT_PASSWORD; }; f"
#: ``git status --porcelain`` letters -> Daytona's ``Status`` words.
_STATUS = {
    " ": "Unmodified",
    "?": "Untracked",
    "M": "Modified",
    "A": "Added",
    "D": "Deleted",
    "R": "Renamed",
    "C": "Copied",
    "U": "Updated but unmerged",
    "T": "Modified",
    "!": "Untracked",
}


def _git_error(what: str, stderr: bytes) -> BadRequest:
    return BadRequest(f"git {what} failed: {stderr.decode(errors='replace').strip()[-500:] or 'no message'}")


@router.post("/clone")
async def clone(sandbox_id: str, body: GitCloneRequest, sandboxes: SandboxesDep) -> Response:
    target = resolve_sandbox_path(body.path)
    argv = ["git", "-c", _HELPER, "clone"]
    if body.branch:
        argv += ["--branch", body.branch]
    if body.depth:
        argv += ["--depth", str(body.depth)]
    argv += ["--", body.url, target]
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if body.username or body.password:
        env |= {"GIT_USERNAME": body.username or "", "GIT_PASSWORD": body.password or ""}
    cloned = await sandboxes.exec(sandbox_id, exec_request(command=argv, env=env, timeout_seconds=CLONE_TIMEOUT))
    if cloned.exit_code != 0:
        raise _git_error("clone", cloned.stderr)
    if body.commit_id:
        checkout = ["git", "-C", target, "checkout", "--detach", body.commit_id]
        moved = await sandboxes.exec(sandbox_id, exec_request(command=checkout, timeout_seconds=60))
        if moved.exit_code != 0:
            raise _git_error("checkout", moved.stderr)
    return Response(status_code=200)


def parse_status(text: str) -> dict[str, Any]:
    """``git status --porcelain=v1 -b`` as Daytona's ``GitStatus``."""
    lines = text.splitlines()
    head = lines[0][3:] if lines and lines[0].startswith("## ") else ""
    branch_part, _, tracking = head.partition(" [")
    branch, _, upstream = branch_part.partition("...")
    detached = branch.startswith("HEAD (no branch)")
    counts = {"ahead": 0, "behind": 0}
    for item in tracking.rstrip("]").split(", "):
        word, _, number = item.partition(" ")
        if word in counts and number.isdigit():
            counts[word] = int(number)
    if branch.startswith("No commits yet on "):
        branch = branch.removeprefix("No commits yet on ")
    files = [
        {"name": line[3:], "staging": _STATUS.get(line[0], "Modified"), "worktree": _STATUS.get(line[1], "Modified")}
        for line in lines[1:]
        if len(line) > 3
    ]
    for entry in files:
        entry["extra"] = ""
    return {
        "currentBranch": "" if detached else branch,
        "detached": detached,
        "upstream": upstream,
        "branchPublished": bool(upstream),
        **counts,
        "fileStatus": files,
    }


@router.get("/status")
async def status(
    sandbox_id: str, path: Annotated[str, Query(min_length=1, max_length=4096)], sandboxes: SandboxesDep
) -> dict[str, Any]:
    argv = ["git", "-C", resolve_sandbox_path(path), "status", "--porcelain=v1", "-b"]
    result = await sandboxes.exec(sandbox_id, exec_request(command=argv, timeout_seconds=60))
    if result.exit_code != 0:
        raise _git_error("status", result.stderr)
    return parse_status(result.stdout.decode(errors="replace"))
