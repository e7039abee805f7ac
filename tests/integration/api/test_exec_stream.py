"""Streamed exec over a real connection (uvicorn), on local and docker sandboxes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from app.client import ApiError, Exit, Output, SandboxClient, sse_events
from app.client_events import ESCAPED, SseDecoder, exec_stream_event
from app.frames import FRAMES_MEDIA_TYPE, FrameDecoder, FrameKind
from tests.fixtures.app import LiveServer
from tests.fixtures.docker import BASE_IMAGE
from tests.support import missing_component

Live = tuple[SandboxClient, str, LiveServer]


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def live(
    request: pytest.FixtureRequest, live_server_factory: Callable[..., LiveServer], api_secret: str
) -> AsyncIterator[Live]:
    if request.param == "local":
        if shutil.which("bwrap") is None:
            missing_component("bubblewrap (bwrap) is not installed")
        server = live_server_factory(api_secret)
    else:
        request.getfixturevalue("docker_engine")
        server = live_server_factory(
            api_secret,
            "docker",
            SANDBOX_BASE_IMAGE=BASE_IMAGE,
            SANDBOX_DOCKER_PULL="never",
            SANDBOX_DOCKER_NETWORK="none",
        )
    await asyncio.to_thread(server.start)
    async with SandboxClient(server.url, api_secret.encode()) as client:
        sandbox = await client.create(network="none")
        try:
            yield client, sandbox["id"], server
        finally:
            await client.delete(sandbox["id"])


async def test_chunks_arrive_while_the_command_runs_then_exit(live: Live) -> None:
    client, sandbox_id, _ = live
    script = "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second; printf '\\377\\000' >&2; exit 3"
    events = client.exec_stream(sandbox_id, script, timeout_seconds=30)
    first = await anext(events)
    assert first == Output("stdout", b"first\n")
    await client.exec(sandbox_id, "touch go")  # only now can the command go on
    rest = [e async for e in events]
    assert rest[-1] == Exit(3, False, False, rest[-1].duration_ms)  # type: ignore[union-attr]
    # Two pipes: their relative order within one instant is the reader's, not the command's.
    assert sorted(rest[:-1], key=str) == [Output("stderr", b"\xff\x00"), Output("stdout", b"second\n")]


async def send_raw(
    client: SandboxClient, sandbox_id: str, body: dict[str, object], accept: str, **params: str
) -> httpx.Response:
    """A signed streamed exec answered as the wire carries it."""
    request = client._http.build_request(
        "POST", f"/v1/sandboxes/{sandbox_id}/exec", json=body, params=params, headers={"Accept": accept}
    )
    request.headers.update(client.auth_headers("POST", request.url, hashlib.sha256(request.content).hexdigest()))
    return await client._http.send(request, stream=True)


TIMED_OUT = {"command": ["sh", "-c", "printf 'h\\303\\251'; printf '\\377' >&2; sleep 5"], "timeout_seconds": 1}


async def test_event_formats_on_the_wire(live: Live) -> None:
    client, sandbox_id, _ = live
    response = await send_raw(client, sandbox_id, TIMED_OUT, "text/event-stream")
    try:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [(event, json.loads(data)) async for event, data, _ in sse_events(response)]
    finally:
        await response.aclose()
    assert ("stdout", {"data": "hé", "encoding": "utf-8"}) in frames
    assert ("stderr", {"data": "/w==", "encoding": "base64"}) in frames
    event, exit_view = frames[-1]
    assert event == "exit" and exit_view["exit_code"] == 124 and exit_view["timed_out"] is True
    assert set(exit_view) == {"exit_code", "timed_out", "truncated", "duration_ms"}


async def test_length_prefixed_frames_on_the_wire(live: Live) -> None:
    client, sandbox_id, _ = live
    response = await send_raw(client, sandbox_id, TIMED_OUT, f"{FRAMES_MEDIA_TYPE}, text/event-stream;q=0.5")
    decoder = FrameDecoder()
    try:
        assert response.headers["content-type"] == FRAMES_MEDIA_TYPE
        frames = [item async for chunk in response.aiter_raw() for item in decoder.feed(chunk)]
    finally:
        await response.aclose()
    decoder.close()  # the answer ended on a frame boundary
    assert (FrameKind.STDOUT, "hé".encode()) in frames and (FrameKind.STDERR, b"\xff") in frames
    kind, payload = frames[-1]
    exit_view = json.loads(payload)
    assert kind == FrameKind.EXIT and exit_view["exit_code"] == 124 and exit_view["timed_out"] is True
    assert set(exit_view) == {"exit_code", "timed_out", "truncated", "duration_ms"}


async def test_stdin_and_stream_flag(live: Live) -> None:
    client, sandbox_id, _ = live
    events = [e async for e in client.exec_stream(sandbox_id, ["cat"], stdin="round trip")]
    assert events[0] == Output("stdout", b"round trip") and isinstance(events[-1], Exit)


async def test_client_disconnect_kills_the_command(live: Live) -> None:
    client, sandbox_id, _ = live
    script = "echo ready; while :; do echo x >> ticks; sleep 0.05; done"
    events = client.exec_stream(sandbox_id, script, timeout_seconds=120)
    assert await anext(events) == Output("stdout", b"ready\n")
    await events.aclose()  # the connection closes with nothing more to write
    await client.exec(sandbox_id, "while [ ! -s ticks ]; do sleep 0.02; done")
    # The service kills the command once it notices; then the file stops growing.
    previous = None
    for _ in range(100):
        size = (await client.exec(sandbox_id, "wc -c < ticks"))["stdout"]
        if size == previous:
            break
        previous = size
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("the command kept running after the client disconnected")
    await asyncio.sleep(0.5)
    assert (await client.exec(sandbox_id, "wc -c < ticks"))["stdout"] == previous


async def test_errors_before_streaming_are_plain_http(live: Live) -> None:
    client, sandbox_id, server = live
    with pytest.raises(ApiError) as err:
        await anext(client.exec_stream("sbx_missing", ["true"]))
    assert (err.value.status, err.value.code) == (404, "sandbox_not_found")
    with pytest.raises(ApiError) as err:
        await anext(client.exec_stream(sandbox_id, ["true"], timeout_seconds=10**9))
    assert err.value.status == 400
    async with httpx.AsyncClient(base_url=server.url) as raw:
        answer = await raw.post(f"/v1/sandboxes/{sandbox_id}/exec", json={"command": ["true"], "stream": True})
    assert answer.status_code == 401


@pytest.mark.parametrize("wire", ["frames", "escaped"])
async def test_any_bytes_arrive_in_order(live: Live, wire: str) -> None:
    """Through the client (frames), and as SSE with ``?encoding=escaped`` (what the CLI reads)."""
    client, sandbox_id, _ = live
    # Bytes no text encoding keeps (invalid UTF-8, CR, backslash escapes), both streams in turn.
    out, err = "printf 'o\\\\n\\r\\377\\n'", "printf 'e\\\\\\\\\\000\\342\\202' >&2"
    script = f"for i in 1 2 3; do {out}; sleep 0.05; {err}; sleep 0.05; done"
    if wire == "frames":
        events = [e async for e in client.exec_stream(sandbox_id, ["sh", "-c", script], timeout_seconds=30)]
    else:
        body = {"command": ["sh", "-c", script], "timeout_seconds": 30}
        response = await send_raw(client, sandbox_id, body, "text/event-stream", encoding=ESCAPED)
        try:
            assert response.headers["content-type"].startswith("text/event-stream")
            decoder = SseDecoder()
            raw = [
                exec_stream_event(event, data, ESCAPED)
                async for chunk in response.aiter_bytes()
                for event, data, _ in decoder.feed_raw(chunk)
            ]
        finally:
            await response.aclose()
        events = [e for e in raw if e is not None]
    assert events[-1] == Exit(0, False, False, events[-1].duration_ms)  # type: ignore[union-attr]
    assert events[:-1] == [Output("stdout", b"o\\n\r\xff\n"), Output("stderr", b"e\\\\\x00\xe2\x82")] * 3


async def test_an_unknown_encoding_is_a_400(live: Live) -> None:
    client, sandbox_id, _ = live
    with pytest.raises(ApiError) as err:
        await client.request(
            "POST",
            f"/v1/sandboxes/{sandbox_id}/exec",
            json={"command": ["true"], "stream": True},
            params={"encoding": "hex"},
        )
    assert (err.value.status, err.value.code) == (400, "bad_request") and "encoding" in err.value.message
