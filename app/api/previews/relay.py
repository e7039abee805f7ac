"""Relaying one request through the proxy: HTTP with streamed bodies both ways, and WebSockets.

Bodies are never buffered: request chunks go upstream as the client sends
them, response chunks go out as the sandbox writes them (SSE events arrive
one by one). A client that goes away ends the upstream exchange at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.api.previews.headers import Headers, client_response_headers
from app.errors import PayloadTooLarge, SandboxControlError
from app.logging import get_logger
from app.services.previews import PreviewAccess, UpstreamError, Upstreams

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = get_logger("previews")

#: Seconds between checks that an open WebSocket's preview still stands (revoked, expired, sandbox gone).
RECHECK_SECONDS = 5.0
#: Close codes that may not be sent in a close frame, and what the other side gets instead.
_UNSENDABLE_CLOSE = {1005: 1000, 1006: 1011, 1015: 1011}


class _Body:
    """The request body as an async iterator of chunks; remembers whether the client left."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.done = asyncio.Event()
        self.disconnected = False

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    raise ConnectionResetError("client disconnected during the upload")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self._limit:  # a chunked body declares no length: counted as it comes
                    raise PayloadTooLarge(f"request body exceeds {self._limit} bytes")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return
        finally:
            self.done.set()


async def relay_http(
    receive: Receive,
    send: Send,
    upstreams: Upstreams,
    access: PreviewAccess,
    method: str,
    target: str,
    headers: Headers,
    has_body: bool,
    max_body: int,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Forward one HTTP exchange; ``SandboxControlError`` when it fails before the answer started."""
    body = _Body(receive, max_body)
    if not has_body:
        body.done.set()

    relaying = asyncio.current_task()
    assert relaying is not None
    left = False

    async def watch_disconnect() -> None:
        nonlocal left
        await body.done.wait()
        while not body.disconnected:
            if (await receive())["type"] == "http.disconnect":
                break
        left = True
        relaying.cancel()

    # The exchange runs in this task, the watch in one beside it: a task fewer per request
    # than running both under ``_first_to_end``.
    watcher = asyncio.ensure_future(watch_disconnect())
    try:
        await _exchange(send, upstreams, access, method, target, headers, body.chunks() if has_body else None,
                        extra_headers)  # fmt: skip
    except asyncio.CancelledError:
        if not left or relaying.cancelling() > 1:
            raise
        relaying.uncancel()  # the client left: nothing more to say
    except ConnectionResetError:
        if not body.disconnected:
            raise
        # The client left in the middle of its upload: nobody to answer, nothing to log.
    finally:
        watcher.cancel()


async def _exchange(
    send: Send,
    upstreams: Upstreams,
    access: PreviewAccess,
    method: str,
    target: str,
    headers: Headers,
    content: AsyncIterator[bytes] | None,
    extra_headers: Sequence[tuple[bytes, bytes]],
) -> None:
    async with upstreams.request(access.ref, access.preview.port, method, target, headers, content) as response:
        start_headers = client_response_headers(response.headers) + list(extra_headers)
        await send({"type": "http.response.start", "status": response.status, "headers": start_headers})
        ended = False
        try:
            async for chunk in response.aiter_stream():
                # The last chunk ends the answer itself when its end is already known.
                ended = response.complete
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        except UpstreamError as exc:
            # Too late for a status: end the body short, as the sandbox did.
            log.info("preview.upstream_broke", preview_id=access.preview.id, error=str(exc))
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _first_to_end(*steps: Coroutine[Any, Any, Any]) -> tuple[asyncio.Task[Any], ...]:
    """Run ``steps`` until one ends, then cancel the others (also when we are cancelled); their tasks."""
    tasks = tuple(asyncio.ensure_future(step) for step in steps)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tasks


async def relay_websocket(
    receive: Receive,
    send: Send,
    upstreams: Upstreams,
    access: PreviewAccess,
    target: str,
    headers: Headers,
    subprotocols: Sequence[str],
    origin: str | None,
    recheck: Callable[[], Awaitable[object]],
    refuse: Callable[[SandboxControlError], Awaitable[None]],
) -> None:
    """Accept the client's WebSocket once the sandbox accepted ours, then copy messages both ways.

    ``refuse`` answers the client when the sandbox's WebSocket cannot be opened (the
    connect is already received). ``recheck`` raises once the preview no longer stands:
    the WebSocket is then closed (4000 + the status) within ``RECHECK_SECONDS``, as a
    new request would be refused.
    """
    if (await receive())["type"] != "websocket.connect":
        return
    try:
        upstream = await upstreams.open_websocket(
            access.ref, access.preview.port, target, headers, subprotocols, origin
        )
    except SandboxControlError as exc:
        # A server without denial responses shows the client only a 403: say why here too.
        log.info("preview.websocket_refused", preview_id=access.preview.id, code=exc.code, error=exc.message)
        await refuse(exc)
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    try:
        *_, watchdog = await _first_to_end(
            _client_to_upstream(receive, upstream), _upstream_to_client(upstream, send), _watch(recheck)
        )
    finally:
        await upstream.close()
    if not watchdog.cancelled() and isinstance(watchdog.result(), SandboxControlError):
        refused = watchdog.result()
        await send({"type": "websocket.close", "code": 4000 + refused.status_code, "reason": refused.message[:120]})


async def _watch(recheck: Callable[[], Awaitable[object]]) -> SandboxControlError:
    while True:
        await asyncio.sleep(RECHECK_SECONDS)
        try:
            await recheck()
        except SandboxControlError as exc:
            return exc


async def _client_to_upstream(receive: Receive, upstream: ClientConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code = int(message.get("code", 1000))
            await upstream.close(code=_UNSENDABLE_CLOSE.get(code, code), reason=str(message.get("reason") or ""))
            return
        if message["type"] != "websocket.receive":
            continue
        text = message.get("text")
        with contextlib.suppress(ConnectionClosed):
            await upstream.send(text if text is not None else message.get("bytes") or b"")


async def _upstream_to_client(upstream: ClientConnection, send: Send) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for data in upstream:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    code = upstream.close_code if upstream.close_code is not None else 1006
    reason = upstream.close_reason or ""
    await send({"type": "websocket.close", "code": _UNSENDABLE_CLOSE.get(code, code), "reason": reason})
