"""Background processes over a real connection (uvicorn), on local and docker sandboxes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.client import ApiError, Output, SandboxClient
from tests.integration.api.test_exec_stream import Live
from tests.integration.api.test_exec_stream import live as live  # the fixture


async def wait_exited(client: SandboxClient, sandbox_id: str, pid: str) -> dict[str, Any]:
    for _ in range(200):
        view = await client.get_process(sandbox_id, pid)
        if view["status"] == "exited":
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit: {view}")


async def test_start_list_logs_and_exit_code(live: Live) -> None:
    client, sandbox_id, _ = live
    started = await client.start_process(sandbox_id, "echo out; echo err >&2; exit 5", env={"X": "1"})
    assert started["status"] in ("running", "exited") and len(started["pid"]) == 12
    done = await wait_exited(client, sandbox_id, started["pid"])
    assert done["exit_code"] == 5 and done["command"] == "echo out; echo err >&2; exit 5"
    assert (done["stdout_bytes"], done["stderr_bytes"], done["truncated"]) == (4, 4, False)
    assert await client.process_log(sandbox_id, started["pid"]) == b"out\n"
    assert await client.process_log(sandbox_id, started["pid"], "stderr", offset=1) == b"rr\n"
    listed = await client.list_processes(sandbox_id)
    assert [p["pid"] for p in listed] == [started["pid"]]


async def test_stdin_round_trip_and_close(live: Live) -> None:
    client, sandbox_id, _ = live
    proc = await client.start_process(sandbox_id, ["sh", "-c", "while read -r line; do echo got:$line; done; echo eof"])
    pid = proc["pid"]
    await client.write_stdin(sandbox_id, pid, b"one\n")
    await client.write_stdin(sandbox_id, pid, b"two\n", close=True)
    done = await wait_exited(client, sandbox_id, pid)
    assert done["exit_code"] == 0 and done["stdin_closed"]
    assert await client.process_log(sandbox_id, pid) == b"got:one\ngot:two\neof\n"
    with pytest.raises(ApiError) as err:
        await client.write_stdin(sandbox_id, pid, b"late\n")
    assert (err.value.status, err.value.code) == (409, "process_conflict")


async def test_follow_streams_both_and_ends_with_the_exit(live: Live) -> None:
    client, sandbox_id, _ = live
    script = "echo a; echo b >&2; while [ ! -e go ]; do sleep 0.02; done; echo c; exit 2"
    pid = (await client.start_process(sandbox_id, script))["pid"]
    follow = client.follow_process(sandbox_id, pid)
    got: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    while got != {"stdout": b"a\n", "stderr": b"b\n"}:
        item = await anext(follow)
        assert isinstance(item, Output)
        got[item.stream] += item.data
    await client.exec(sandbox_id, "touch go")
    rest = [item async for item in follow]
    assert rest[:-1] == [Output("stdout", b"c\n")]
    assert rest[-1]["status"] == "exited" and rest[-1]["exit_code"] == 2  # type: ignore[index]
    # Resuming from offsets sends only what follows them.
    resumed = [item async for item in client.follow_process(sandbox_id, pid, offset=2, stderr_offset=2)]
    assert resumed[:-1] == [Output("stdout", b"c\n")]


async def test_signal_and_delete(live: Live) -> None:
    client, sandbox_id, _ = live
    pid = (await client.start_process(sandbox_id, ["sleep", "300"]))["pid"]
    assert (await client.get_process(sandbox_id, pid))["status"] == "running"
    await client.signal_process(sandbox_id, pid, "TERM")
    done = await wait_exited(client, sandbox_id, pid)
    assert done["exit_code"] == 128 + 15
    with pytest.raises(ApiError) as err:
        await client.signal_process(sandbox_id, pid, "KILL")
    assert err.value.code == "process_conflict"

    other = (await client.start_process(sandbox_id, ["sleep", "300"]))["pid"]
    await client.delete_process(sandbox_id, other)
    with pytest.raises(ApiError) as err:
        await client.get_process(sandbox_id, other)
    assert (err.value.status, err.value.code) == (404, "process_not_found")
    assert [p["pid"] for p in await client.list_processes(sandbox_id)] == [pid]


async def test_a_stopped_sandbox_reads_its_processes_as_exited(live: Live) -> None:
    client, sandbox_id, _ = live
    pid = (await client.start_process(sandbox_id, "echo kept; sleep 300"))["pid"]
    await client.stop(sandbox_id)
    await client.start(sandbox_id)
    for _ in range(200):  # the heartbeat goes stale within seconds of the stop
        view = await client.get_process(sandbox_id, pid)
        if view["status"] == "exited":
            break
        await asyncio.sleep(0.1)
    assert view["status"] == "exited" and view["exit_code"] is None
    assert await client.process_log(sandbox_id, pid) == b"kept\n"


async def test_bad_input_is_a_clear_4xx(live: Live) -> None:
    client, sandbox_id, _ = live
    with pytest.raises(ApiError) as err:
        await client.get_process(sandbox_id, "0123456789ab")
    assert (err.value.status, err.value.code) == (404, "process_not_found")
    with pytest.raises(ApiError) as err:
        await client.get_process(sandbox_id, "not-a-pid")
    assert err.value.status in (400, 422)
    with pytest.raises(ApiError) as err:
        await client.start_process(sandbox_id, [])
    assert err.value.status in (400, 422)
