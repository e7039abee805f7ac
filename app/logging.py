"""Structured JSON logs with a request id and secret redaction.

Redaction is a processor in the chain, so no call site can forget it: values
under secret-looking keys are masked, and any known secret value (the API
secrets, S3 keys, callback secret) or bearer token is masked wherever it
appears inside a string, as are preview tokens (in paths uvicorn logs).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

#: The id of the HTTP request being served, bound by the request middleware.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_SECRET_KEY = re.compile(r"(token|secret|password|passwd|authorization|api[_-]?key|private[_-]?key|_key$)", re.I)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_URL_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
_SIGNATURE = re.compile(r"(?i)(v1=)[0-9a-f]{16,}")
#: A preview token (in a ``/p/<token>/`` path or ``?preview_token=``): its id and expiry stay readable.
_PREVIEW_TOKEN = re.compile(r"(pv[0-9a-f]{20}\.[0-9]{1,12}\.)[A-Za-z0-9_-]{43}")
MASK = "[REDACTED]"


class Redactor:
    """A structlog processor that masks secrets in keys and values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """Mask known secrets, bearer tokens, URL credentials, signatures and preview tokens in ``text``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
        text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
        text = _PREVIEW_TOKEN.sub(lambda m: m.group(1) + MASK, text)
        return _SIGNATURE.sub(lambda m: m.group(1) + MASK, text)

    def _value(self, key: str, value: Any) -> Any:
        if _SECRET_KEY.search(key) and value not in (None, "", False):
            return MASK
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(key, v) for v in value]
        return value

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            if key == "event" and isinstance(event[key], str):
                event[key] = self.scrub(event[key])
            else:
                event[key] = self._value(key, event[key])
        return event


def _add_request_id(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = request_id_var.get()
    if request_id and "request_id" not in event:
        event["request_id"] = request_id
    return event


def configure_logging(
    level: str = "info", secrets: Iterable[str] = (), stream: Any = None, *, replica: str | None = None
) -> Redactor:
    """Route structlog and stdlib logging through one JSON renderer with redaction.

    ``replica`` is added to every line, so the logs of several replicas can be told apart.
    """
    redactor = Redactor(secrets)

    def add_replica(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if replica is not None:
            event.setdefault("replica", replica)
        return event

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        add_replica,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Uvicorn and libraries log through stdlib; render them the same way.
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # Access logs duplicate our request log line (which has the request id).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "aiosqlite", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor


def get_logger(name: str | None = None) -> Any:
    """A structlog logger (bound with ``component=name`` when given)."""
    # Initial values keep the proxy lazy: binding now would freeze the
    # configuration in force at import time, before configure_logging runs.
    return structlog.get_logger(component=name) if name else structlog.get_logger()
