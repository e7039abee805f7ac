"""The CLI's standard-library transport, for commands run once per shell line.

``sandboxctl exec ID -- true`` must answer in a few hundred milliseconds, and
importing httpx and asyncio (what the async client needs) costs more than the
command itself. So exec talks to the service with ``http.client``: the same
signed headers as ``app.client`` and the same SSE decoding.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from app.auth import request_headers
from app.client_events import RawSseEvent, SseDecoder, api_error

#: Seconds a read may wait: the service sends a keepalive every 15 s of a quiet stream.
READ_TIMEOUT = 600.0
_READ = 1 << 16


@contextmanager
def post_json(url: str, secret: bytes, path: str, body: Any, *, accept: str) -> Iterator[http.client.HTTPResponse]:
    """A signed ``POST`` of ``body`` as JSON to ``url`` + ``path``; an error answer raises ``ApiError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise http.client.InvalidURL(f"service URL {url!r} is not an http(s) URL")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=READ_TIMEOUT)
    target = parts.path.rstrip("/") + path
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": accept}
    headers.update(request_headers(secret, "POST", target, hashlib.sha256(payload).hexdigest()))
    try:
        connection.request("POST", target, body=payload, headers=headers)
        response = connection.getresponse()
        if response.status >= 400:
            raise api_error(response.status, response.read())
        yield response
    finally:
        # Closing mid-stream is how a client says it went away: the service kills the command.
        connection.close()


def sse_events(response: http.client.HTTPResponse) -> Iterator[RawSseEvent]:
    """(event, data as bytes, id) of each server-sent event in ``response``, as they arrive."""
    decoder = SseDecoder()
    while chunk := response.read1(_READ):
        yield from decoder.feed_raw(chunk)
