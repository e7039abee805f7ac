"""``Provider.exec_stream``, checked against every provider in ``PROVIDER_FACTORIES``.

Liveness is checked by handshake, not by clocks: a command prints, then waits
for a file the test creates only after the print arrived. A provider that
held output back until the end would never see the file and run into the
deadline, failing the check. Providers whose backend answers an exec only at
its end declare ``capabilities.live_output = False``; only the handshake
checks are skipped for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import pytest

from app.providers.base import TIMEOUT_EXIT_CODE, ExecEvent, ExecResult, OutputChunk, Provider
from app.providers.streaming import collect
from tests.integration.providers.test_conformance import _known_differences, create, read_all, sh  # noqa: F401

#: Waits (bounded by the exec's deadline) for the file the test writes.
WAIT_GO = "while [ ! -e go ]; do sleep 0.02; done; "


@pytest.fixture
async def box(provider: Provider) -> str:
    """A running sandbox with defaults; deleted by the provider fixture."""
    return (await create(provider)).provider_object_id


def stream(provider: Provider, ref: str, script: str, **kwargs: object) -> AsyncGenerator[ExecEvent, None]:
    timeout = kwargs.pop("timeout", 30.0)
    return provider.exec_stream(ref, ["sh", "-c", script], timeout=timeout, **kwargs)  # type: ignore[arg-type]


def live_only(provider: Provider) -> None:
    if not provider.capabilities.live_output:
        pytest.skip(f"{provider.name} hands output over when the command ended (capabilities.live_output)")


async def until(events: AsyncIterator[ExecEvent], stream_name: str, needle: bytes) -> bytes:
    """Read chunks of ``stream_name`` until ``needle`` arrived; what was read."""
    seen = b""
    async for event in events:
        assert isinstance(event, OutputChunk), f"ended before {needle!r} arrived: {event}"
        if event.stream == stream_name:
            seen += event.data
            if needle in seen:
                return seen
    raise AssertionError(f"stream ended before {needle!r}")


async def test_stream_yields_chunks_in_order_then_one_result(provider: Provider, box: str) -> None:
    events = [e async for e in stream(provider, box, "for i in 1 2 3 4 5; do echo line$i; done; exit 3")]
    *chunks, last = events
    assert isinstance(last, ExecResult) and last.exit_code == 3 and not last.timed_out
    assert (last.stdout, last.stderr) == (b"", b"")
    assert all(isinstance(c, OutputChunk) for c in chunks)
    assert b"".join(c.data for c in chunks if isinstance(c, OutputChunk)) == b"".join(
        b"line%d\n" % i for i in range(1, 6)
    )


async def test_stream_collects_to_the_exec_result(provider: Provider, box: str) -> None:
    script = "printf 'out\\0bin'; echo err >&2; exit 7"
    streamed = await collect(stream(provider, box, script))
    plain = await sh(provider, box, script)
    assert (streamed.exit_code, streamed.stdout, streamed.stderr) == (plain.exit_code, plain.stdout, plain.stderr)
    assert (streamed.exit_code, streamed.stdout, streamed.stderr) == (7, b"out\0bin", b"err\n")


async def test_stream_delivers_output_while_the_command_runs(provider: Provider, box: str) -> None:
    live_only(provider)
    async with aclosing(stream(provider, box, "echo first; " + WAIT_GO + "echo second", timeout=20)) as events:
        await until(events, "stdout", b"first\n")
        await sh(provider, box, "touch go")
        rest = await collect(events)
    assert rest.stdout == b"second\n" and rest.exit_code == 0 and not rest.timed_out


async def test_stream_interleaves_stdout_and_stderr_as_produced(provider: Provider, box: str) -> None:
    live_only(provider)
    script = "echo out1; " + WAIT_GO + "echo err1 >&2; rm go; " + WAIT_GO + "echo out2"
    async with aclosing(stream(provider, box, script, timeout=20)) as events:
        await until(events, "stdout", b"out1\n")
        await sh(provider, box, "touch go")
        await until(events, "stderr", b"err1\n")
        await sh(provider, box, "while [ -e go ]; do sleep 0.02; done; touch go")
        rest = await collect(events)
    assert (rest.stdout, rest.stderr, rest.exit_code) == (b"out2\n", b"", 0)


async def test_stream_deadline_kills_and_reports_124(provider: Provider, box: str) -> None:
    events = [e async for e in stream(provider, box, "echo started; sleep 100", timeout=1.0)]
    result = events[-1]
    assert isinstance(result, ExecResult) and result.timed_out and result.exit_code == TIMEOUT_EXIT_CODE
    # (stderr may carry the shell's "Killed" notice)
    assert b"".join(e.data for e in events if isinstance(e, OutputChunk) and e.stream == "stdout") == b"started\n"


async def test_stream_caps_output_per_stream(provider: Provider, box: str) -> None:
    script = "head -c 300000 /dev/zero; head -c 5000 /dev/zero >&2"
    result = await collect(stream(provider, box, script, max_output_bytes=1000))
    assert result.truncated and (len(result.stdout), len(result.stderr)) == (1000, 1000) and result.exit_code == 0


async def test_stream_stdin_round_trip(provider: Provider, box: str) -> None:
    live_only(provider)
    feed: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def stdin() -> AsyncIterator[bytes]:
        while (chunk := await feed.get()) is not None:
            yield chunk

    async with aclosing(provider.exec_stream(box, ["cat"], timeout=20, stdin=stdin())) as events:
        await feed.put(b"ping\n")
        await until(events, "stdout", b"ping\n")  # echoed before more input exists
        await feed.put(b"pong\x00\xff")
        await feed.put(None)
        rest = await collect(events)
    assert rest.stdout == b"pong\x00\xff" and rest.exit_code == 0


async def test_stream_whole_stdin_round_trip(provider: Provider, box: str) -> None:
    async def stdin() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        yield b"end"

    result = await collect(provider.exec_stream(box, ["sh", "-c", "wc -c"], timeout=30, stdin=stdin()))
    assert result.stdout.strip() == b"100003" and result.exit_code == 0


async def test_stream_consumer_leaving_kills_the_command(provider: Provider, box: str) -> None:
    live_only(provider)
    script = "echo ready; (while :; do echo x >> ticks; sleep 0.05; done) & sleep 100"
    async with aclosing(stream(provider, box, script, timeout=60)) as events:
        await until(events, "stdout", b"ready\n")
        await sh(provider, box, "while [ ! -s ticks ]; do sleep 0.02; done")
    first = await read_all(provider.read_file(box, "/workspace/ticks"))
    await asyncio.sleep(0.6)  # a surviving loop would tick ~12 times meanwhile
    assert await read_all(provider.read_file(box, "/workspace/ticks")) == first


async def test_stream_cancelled_consumer_kills_the_command(provider: Provider, box: str) -> None:
    live_only(provider)
    script = "echo ready; (while :; do echo x >> ticks; sleep 0.05; done) & sleep 100"
    ready = asyncio.Event()

    async def consume() -> None:
        async with aclosing(stream(provider, box, script, timeout=60)) as events:
            await until(events, "stdout", b"ready\n")
            ready.set()
            await collect(events)

    task = asyncio.create_task(consume())
    await ready.wait()
    await sh(provider, box, "while [ ! -s ticks ]; do sleep 0.02; done")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first = await read_all(provider.read_file(box, "/workspace/ticks"))
    await asyncio.sleep(0.6)
    assert await read_all(provider.read_file(box, "/workspace/ticks")) == first


async def test_pty_echo_resize_and_exit_code(provider: Provider, box: str) -> None:
    live_only(provider)
    session = provider.open_pty(box, ["sh"], cols=70, rows=15, timeout=60)
    output = session.output()
    seen = b""

    async def until_seen(needle: bytes) -> None:
        nonlocal seen
        while needle not in seen:
            seen += await anext(output)

    try:
        await session.write(b"stty size; echo x-$((2 + 3))\n")
        await until_seen(b"x-5")
        assert b"15 70" in seen
        await session.resize(101, 42)
        await session.write(b"stty size\n")
        await until_seen(b"42 101")
        await session.write(b"exit 4\n")
        async for data in output:
            seen += data
        assert await session.exit_code() == 4
    finally:
        await session.aclose()
