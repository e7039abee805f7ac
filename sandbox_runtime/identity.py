"""Who the agent's commits are by: the prompt's author, else a configured fallback.

The identity goes into the repository's own git config (``user.name``, ``user.email``),
so every commit in the sandbox carries it: the agent's tools', a hook's, anyone's. A
fallback is written at boot, so ``git commit`` never fails for lack of an identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENTITY = re.compile(r"\s*(?P<name>[^<>]*?)\s*<(?P<email>[^<>\s]+)>\s*\Z")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f<>]")


@dataclass(frozen=True)
class GitIdentity:
    """A commit author: ``name`` and ``email``, both one-line and non-empty."""

    name: str
    email: str

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("email", self.email)):
            if not value.strip() or _FORBIDDEN.search(value):
                raise ValueError(f"git identity {label} {value!r} must be one non-empty line without <>")

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"

    @classmethod
    def parse(cls, text: str) -> GitIdentity:
        """``Name <email>``.

        Raises:
            ValueError: not of that form.
        """
        match = _IDENTITY.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not 'Name <email>'")
        return cls(match["name"], match["email"])

    @classmethod
    def of(cls, name: str | None, email: str | None) -> GitIdentity | None:
        """The identity of ``name`` and ``email``, None when either is missing or unusable."""
        if not name or not email:
            return None
        try:
            return cls(name.strip(), email.strip())
        except ValueError:
            return None
