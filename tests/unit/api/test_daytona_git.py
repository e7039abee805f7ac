"""``git status --porcelain -b`` as Daytona's ``GitStatus``."""

from __future__ import annotations

from app.api.daytona.toolbox_git import parse_status


def test_branch_tracking_and_files() -> None:
    status = parse_status("## main...origin/main [ahead 2, behind 1]\n M a.py\nA  b.py\n?? c.txt\n")
    assert (status["currentBranch"], status["upstream"], status["ahead"], status["behind"]) == (
        "main",
        "origin/main",
        2,
        1,
    )
    assert [(f["name"], f["staging"], f["worktree"]) for f in status["fileStatus"]] == [
        ("a.py", "Unmodified", "Modified"),
        ("b.py", "Added", "Unmodified"),
        ("c.txt", "Untracked", "Untracked"),
    ]


def test_new_repository_and_detached_head() -> None:
    assert parse_status("## No commits yet on main\n")["currentBranch"] == "main"
    detached = parse_status("## HEAD (no branch)\n")
    assert detached["detached"] and detached["currentBranch"] == ""
