"""Keeping credentials out of snapshots.

The Open-Inspect reference cloned with ``https://x-access-token:<token>@github.com/…``,
so the token sat in ``.git/config`` (``remote.origin.url``), in the reflog ("clone:
from …") and therefore in every snapshot. Our supervisor uses a credential helper
instead; this module makes sure a snapshot stays clean even when something in the
sandbox (the agent, a setup script) wrote a credential anyway.

What the archive writer does with each member, by absolute sandbox path
(``fnmatch`` patterns, where ``*`` also matches ``/``):

* **dropped**: ``*/.git-credentials``, ``*/.netrc``, and the env server's credential
  stores ``*/.local/share/opencode/auth.json`` and ``*/.local/share/opencode/mcp-auth.json``,
  also where the runtime keeps them (``sandbox_runtime.contract.SNAPSHOT_EXCLUDED_STATE_FILES``:
  provider keys handed to a warm sandbox's env server at its claim);
  hard links to a dropped file are dropped with it;
* **git config rewritten** (``*/.gitconfig``, ``*/.config/git/config``,
  ``*/.git/config``, ``*/.git/config.worktree``,
  ``*/.git/modules/*/config``, ``*/.git/worktrees/*/config.worktree``):
  - every ``extraheader`` key of an ``[http]`` / ``[http "<url>"]`` section is removed
    (``http.extraheader = AUTHORIZATION: basic …`` is the other common token carrier);
  - every ``[url "<base>"]`` section whose base URL carries userinfo is removed whole
    (``url.https://<token>@github.com/.insteadOf`` rewrites inject credentials);
  - every inline credential helper (``helper = !…``) in ``[credential…]`` is removed;
  - userinfo is stripped from every URL left: ``https://user:token@host/x`` →
    ``https://host/x`` (the whole userinfo goes, since a token is often passed as the
    user name; only for ssh-like schemes is the user kept: ``ssh://git@host``).
* **URLs redacted** (``*/.git/FETCH_HEAD``, ``*/.git/logs/*``, and the same under
  ``.git/modules/``): userinfo stripped from every URL, as above.
* **refused** with ``UnsafeEntry``: any member whose bytes (name, link target, pax
  header or content, after the rewriting above) contain one of the ``secret_values``
  the caller knows about, e.g. the clone token it injected. Refusing is deliberate:
  a credential in arbitrary file content cannot be removed without corrupting the file.

Rewritten files are buffered whole, so they are limited to ``MAX_REWRITE_BYTES``; a
larger git config is refused, a larger reflog is dropped.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from fnmatch import translate

from app.snapshots.safe_tar import UnsafeEntry
from sandbox_runtime.contract import SNAPSHOT_EXCLUDED_STATE_FILES

MAX_REWRITE_BYTES = 4 << 20
#: Shorter secret values are ignored: they would match innocent bytes.
MIN_SECRET_LENGTH = 8

DROP_PATTERNS = (
    "*/.git-credentials",
    "*/.netrc",
    "*/.local/share/opencode/auth.json",
    "*/.local/share/opencode/mcp-auth.json",
    *(f"*/{path}" for path in SNAPSHOT_EXCLUDED_STATE_FILES),
)
GIT_CONFIG_PATTERNS = (
    "*/.gitconfig",
    "*/.config/git/config",
    "*/.git/config",
    "*/.git/config.worktree",
    "*/.git/modules/*/config",
    "*/.git/worktrees/*/config.worktree",
)
URL_TEXT_PATTERNS = (
    "*/.git/FETCH_HEAD",
    "*/.git/logs/*",
    "*/.git/modules/*/FETCH_HEAD",
    "*/.git/modules/*/logs/*",
)


class ScrubAction(enum.Enum):
    """What the writer does with one member."""

    KEEP = "keep"
    DROP = "drop"
    GIT_CONFIG = "git_config"
    REDACT_URLS = "redact_urls"


def _any_of(patterns: Iterable[str]) -> re.Pattern[str]:
    # One regex per action instead of one fnmatch call per pattern: classify runs for
    # every member of every snapshot (tens of thousands of small files), same matches.
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


_ACTIONS = (
    (_any_of(DROP_PATTERNS), ScrubAction.DROP),
    (_any_of(GIT_CONFIG_PATTERNS), ScrubAction.GIT_CONFIG),
    (_any_of(URL_TEXT_PATTERNS), ScrubAction.REDACT_URLS),
)


def classify(path: str) -> ScrubAction:
    """The action for the member at absolute sandbox ``path``."""
    for pattern, action in _ACTIONS:
        if pattern.match(path):
            return action
    return ScrubAction.KEEP


_URL_USERINFO = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@"'<>]+)@""")


#: Schemes whose user name is not a secret (``ssh://git@host``); only a password is removed.
_USER_IS_NOT_SECRET = ("ssh://", "git+ssh://", "ssh+git://", "sftp://")


def _strip_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if scheme.lower() in _USER_IS_NOT_SECRET:
        return f"{scheme}{userinfo.split(':', 1)[0]}@"
    return scheme  # http(s) and anything unknown: a token often poses as the user name


def redact_urls(text: str) -> str:
    """Strip credentials from every ``scheme://userinfo@host`` URL in ``text``."""
    return _URL_USERINFO.sub(_strip_userinfo, text)


def _has_userinfo(text: str) -> bool:
    return any(m.group(2) for m in _URL_USERINFO.finditer(text))


# [section "sub"] or the legacy [section.sub]; the rest of the line may hold a key.
_SECTION = re.compile(r"""^\s*\[\s*([A-Za-z0-9-]+)(?:\s+"((?:[^"\\]|\\.)*)"|\.([^\]\s]*))?\s*\](.*)$""")


def scrub_git_config(data: bytes) -> bytes:
    """Remove credentials from a git config file (see the module docstring)."""
    text = data.decode("utf-8", "surrogateescape")
    out: list[str] = []
    section = ""
    subsection = ""
    drop_section = False
    continuing_drop = False
    for line in text.splitlines(keepends=True):
        if continuing_drop:
            # The value of a removed key continues on this line (trailing backslash).
            continuing_drop = line.rstrip("\r\n").endswith("\\")
            continue
        header = _SECTION.match(line)
        if header:
            section = header.group(1).lower()
            subsection = header.group(2) if header.group(2) is not None else (header.group(3) or "")
            drop_section = section == "url" and _has_userinfo(subsection)
            if drop_section:
                continue
            rest = header.group(4)
            if rest.strip() and not rest.lstrip().startswith(("#", ";")):
                # "[section] key = value" on one line: judge the key part like any other line.
                out.append(redact_urls(line[: len(line) - len(rest)]) + "\n")
                line = rest.lstrip()
            else:
                out.append(redact_urls(line))
                continue
        if drop_section:
            continue
        key = line.split("=", 1)[0].strip().lower()
        value = line.split("=", 1)[1].strip() if "=" in line else ""
        remove = (section == "http" and key == "extraheader") or (
            section == "credential" and key == "helper" and value.lstrip('"').startswith("!")
        )
        if remove:
            continuing_drop = line.rstrip("\r\n").endswith("\\")
            continue
        out.append(redact_urls(line))
    return "".join(out).encode("utf-8", "surrogateescape")


def scrub_url_text(data: bytes) -> bytes:
    """Strip URL credentials from a text file (reflog, FETCH_HEAD)."""
    return redact_urls(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


class SecretScanner:
    """Finds known secret values in a byte stream fed piece by piece.

    Keeps the last ``len(longest) - 1`` bytes so a value split across pieces is found.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self._needles = sorted({v.encode() for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len)
        self._keep = max((len(n) for n in self._needles), default=1) - 1
        self._tail = b""

    def __bool__(self) -> bool:
        return bool(self._needles)

    def feed(self, data: bytes, entry: str) -> None:
        """Scan ``data`` (part of member ``entry``); raise ``UnsafeEntry`` on a hit."""
        if not self._needles or not data:
            return
        seam = self._tail + data[: self._keep]
        for needle in self._needles:
            if needle in data or needle in seam:
                raise UnsafeEntry(entry, "contains a credential the service knows; remove it and snapshot again")
        self._tail = (self._tail + data)[-self._keep :] if len(data) < self._keep else data[-self._keep :]
