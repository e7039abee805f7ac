"""Credentials never reach a snapshot."""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from app.snapshots.manifest import blob_key
from app.snapshots.reader import restore_snapshot
from app.snapshots.safe_tar import UnsafeEntry
from app.snapshots.scrub import ScrubAction, SecretScanner, classify, redact_urls, scrub_git_config
from app.snapshots.writer import write_snapshot
from app.storage.blobs import BlobStore
from tests.support_tree import tar_extract, tar_stream

TOKEN = "ghs_16C7e42F292c6912E7710c838347Ae178B4a"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()

GIT_CONFIG = f"""[core]
\trepositoryformatversion = 0
\tbare = false
[remote "origin"]
\turl = https://x-access-token:{TOKEN}@github.com/octo/repo.git
\tfetch = +refs/heads/*:refs/remotes/origin/*
\tpushurl = https://{TOKEN}@github.com/octo/repo.git
[http "https://github.com/"]
\textraheader = AUTHORIZATION: basic {BASIC}
[http]
\tsslVerify = true
\textraHeader = Authorization: Bearer {TOKEN}
[url "https://x-access-token:{TOKEN}@github.com/"]
\tinsteadOf = https://github.com/
\tpushInsteadOf = git@github.com:
[url "git@github.com:"]
\tinsteadOf = gh:
[credential]
\thelper = "!f() {{ echo username=x-access-token; echo password={TOKEN}; }}; f"
[credential "https://github.com"]
\tusername = octo
[submodule "lib"]
\turl = ssh://git:{TOKEN}@example.com/lib.git
[branch "main"]
\tremote = origin
\tmerge = refs/heads/main
"""


def test_scrub_git_config() -> None:
    out = scrub_git_config(GIT_CONFIG.encode()).decode()
    assert TOKEN not in out and BASIC not in out
    assert "url = https://github.com/octo/repo.git" in out
    assert "pushurl = https://github.com/octo/repo.git" in out
    assert "url = ssh://git@example.com/lib.git" in out  # ssh keeps the user, loses the password
    assert "extraheader" not in out.lower()
    assert "sslVerify = true" in out
    assert "insteadOf = https://github.com/" not in out  # the credentialed rewrite is gone...
    assert '[url "git@github.com:"]\n\tinsteadOf = gh:' in out  # ...a harmless one stays
    assert "helper" not in out
    assert "username = octo" in out
    assert '[branch "main"]\n\tremote = origin\n\tmerge = refs/heads/main\n' in out


def test_scrub_git_config_untouched_when_clean() -> None:
    clean = b'[core]\n\tbare = false\n[remote "origin"]\n\turl = git@github.com:octo/repo.git\n'
    assert scrub_git_config(clean) == clean


def test_scrub_git_config_edge_syntax() -> None:
    text = (
        f"[http] extraheader = X-Token: {TOKEN}\n"
        f"[url.https://{TOKEN}@h/]\n\tinsteadOf = https://h/\n"
        f"[http]\n\textraheader = a \\\n  {TOKEN}\n\tpostBuffer = 1\n"
    )
    out = scrub_git_config(text.encode()).decode()
    assert TOKEN not in out
    assert "postBuffer = 1" in out


def test_redact_urls() -> None:
    assert redact_urls(f"clone: from https://x:{TOKEN}@github.com/o/r") == "clone: from https://github.com/o/r"
    assert redact_urls("ssh://git@host/x and git@github.com:o/r") == "ssh://git@host/x and git@github.com:o/r"


@pytest.mark.parametrize(
    ("path", "action"),
    [
        ("/workspace/.git-credentials", ScrubAction.DROP),
        ("/workspace/sub/.netrc", ScrubAction.DROP),
        ("/home/sandbox/.local/share/opencode/auth.json", ScrubAction.DROP),
        ("/workspace/.git/config", ScrubAction.GIT_CONFIG),
        ("/workspace/vendor/lib/.git/config", ScrubAction.GIT_CONFIG),
        ("/workspace/.git/modules/lib/config", ScrubAction.GIT_CONFIG),
        ("/workspace/.git/logs/refs/heads/main", ScrubAction.REDACT_URLS),
        ("/workspace/.git/FETCH_HEAD", ScrubAction.REDACT_URLS),
        ("/workspace/config", ScrubAction.KEEP),
        ("/workspace/src/auth.json", ScrubAction.KEEP),
    ],
)
def test_classify(path: str, action: ScrubAction) -> None:
    assert classify(path) is action


def test_scanner_finds_values_split_across_pieces() -> None:
    scanner = SecretScanner([TOKEN, "short"])
    scanner.feed(b"prefix " + TOKEN[:10].encode(), "/workspace/a")
    with pytest.raises(UnsafeEntry, match="credential"):
        scanner.feed(TOKEN[10:].encode() + b" suffix", "/workspace/a")
    SecretScanner(["short"]).feed(b"short is too short to be a secret", "/workspace/b")


def make_repo_tree(root: Path) -> Path:
    git = root / ".git"
    (git / "logs/refs/heads").mkdir(parents=True)
    (git / "config").write_text(GIT_CONFIG)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "FETCH_HEAD").write_text(f"abc123\t\tbranch 'main' of https://x-access-token:{TOKEN}@github.com/octo/repo\n")
    clone_line = (
        f"0000 abc123 A <a@b> 1700000000 +0000\tclone: from https://x-access-token:{TOKEN}@github.com/octo/repo.git\n"
    )
    (git / "logs/HEAD").write_text(clone_line)
    (git / "logs/refs/heads/main").write_text(clone_line)
    (root / ".git-credentials").write_text(f"https://x-access-token:{TOKEN}@github.com\n")
    (root / "src").mkdir()
    (root / "src/main.py").write_text("print('hello')\n")
    return root


async def test_no_secret_in_snapshot(blob_store: BlobStore, tmp_path: Path) -> None:
    src = make_repo_tree(tmp_path / "src")
    manifest = await write_snapshot(
        blob_store, snapshot_id="s", sandbox_id="sbx", provider="local", paths=["/workspace"],
        export=lambda p: tar_stream(src), secret_values=[TOKEN],
    )  # fmt: skip
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(await blob_store.get_bytes(blob_key("s")))
    for needle in (TOKEN, BASIC, TOKEN[:20]):
        assert needle.encode() not in raw
    assert sorted(manifest.scrubbed) == [
        "/workspace/.git-credentials",
        "/workspace/.git/FETCH_HEAD",
        "/workspace/.git/config",
        "/workspace/.git/logs/HEAD",
        "/workspace/.git/logs/refs/heads/main",
    ]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        config = tar.extractfile("workspace/.git/config").read().decode()  # type: ignore[union-attr]
    assert "workspace/.git-credentials" not in names
    assert "workspace/src/main.py" in names
    assert "url = https://github.com/octo/repo.git" in config

    # The scrubbed repository restores and stays a usable git config.
    target = tmp_path / "target"

    async def importer(path: str, stream: AsyncIterator[bytes]) -> None:
        code, err = await tar_extract(stream, target)
        assert code == 0, err

    await restore_snapshot(blob_store, "s", importer)
    assert (target / ".git/config").read_text() == config
    assert not (target / ".git-credentials").exists()


async def test_known_secret_in_a_file_refuses_the_snapshot(blob_store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "notes").mkdir(parents=True)
    (src / "notes/todo.md").write_text(f"remember: {TOKEN}\n")
    with pytest.raises(UnsafeEntry, match=r"/workspace/notes/todo\.md"):
        await write_snapshot(
            blob_store, snapshot_id="s", sandbox_id="sbx", provider="local", paths=["/workspace"],
            export=lambda p: tar_stream(src), secret_values=[TOKEN],
        )  # fmt: skip
    assert await blob_store.list() == []
