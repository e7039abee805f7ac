"""Structured JSON log lines on stderr, with secret redaction.

The runtime cannot use the service's structlog setup (it imports nothing from
``app``), and a sandbox's stderr is usually collected verbatim by the provider,
so each line is one self-contained JSON object. Every known secret value is
replaced by ``***`` in the rendered line, whichever field carried it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

REDACTED = "***"
_MIN_SECRET_LEN = 4  # shorter values would redact innocent substrings everywhere


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, REDACTED)
    return text


class JsonLogger:
    """Writes ``{"ts", "level", "component", "event", ...fields}`` lines to a stream."""

    def __init__(self, component: str, *, secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
        self.component = component
        self._secrets = tuple(secrets)
        self._stream = stream

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Also redact ``secrets`` from now on (e.g. a token that arrived with a session claim)."""
        self._secrets = (*self._secrets, *secrets)

    def scrub(self, text: str) -> str:
        """Redact this logger's secrets from ``text``."""
        return scrub(text, self._secrets)

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Emit one line; never raises (a broken stderr must not kill the runtime)."""
        record = {"ts": round(time.time(), 3), "level": level, "component": self.component, "event": event}
        record.update(fields)
        line = self.scrub(json.dumps(record, default=str, ensure_ascii=False))
        stream = self._stream or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, event: str, **fields: Any) -> None:
        """Log at debug level."""
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log at info level."""
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log at warning level."""
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log at error level."""
        self.log("error", event, **fields)

    def relay(self, source: str, line: str) -> None:
        """Forward one output line of a child process: JSON lines as-is, others wrapped."""
        text = line.rstrip("\r\n")
        if not text:
            return
        if text.startswith("{") and text.endswith("}"):
            stream = self._stream or sys.stderr
            try:
                stream.write(self.scrub(text) + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass
            return
        self.log("info", "output", source=source, line=text)
