"""Code written for the ``daytona`` SDK's async client (``AsyncDaytona``) runs unchanged against the service.

The same real service as ``test_daytona_sdk`` (one per module): lifecycle by
label across stop/start, exec with a timeout, ``code_run``, a background
session command, files, and the SDK's own errors.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from daytona import (
    AsyncDaytona,
    CreateSandboxFromSnapshotParams,
    DaytonaAuthenticationError,
    DaytonaNotFoundError,
    DaytonaTimeoutError,
    FileUpload,
    ListSandboxesQuery,
    SandboxState,
    SessionExecuteRequest,
)

from tests.fixtures.daytona_api import DaytonaService

pytestmark = pytest.mark.slow


async def test_async_client_end_to_end(daytona_service: DaytonaService) -> None:
    task = secrets.token_hex(4)
    async with AsyncDaytona(daytona_service.config()) as daytona:
        sandbox = await daytona.create(CreateSandboxFromSnapshotParams(labels={"task": task}))
        try:
            assert sandbox.state == SandboxState.STARTED
            assert (await sandbox.process.exec("echo $((6 * 7))")).result == "42\n"
            ran = await sandbox.process.code_run("import sys; print('out'); sys.exit(5)")
            assert (ran.exit_code, ran.result) == (5, "out\n")
            with pytest.raises(DaytonaTimeoutError):
                await sandbox.process.exec("sleep 30", timeout=1)

            await sandbox.process.create_session("s")
            started = await sandbox.process.execute_session_command(
                "s", SessionExecuteRequest(command="echo ready; sleep 30", run_async=True)
            )
            for _ in range(100):
                logs = await sandbox.process.get_session_command_logs("s", started.cmd_id)
                if logs.stdout:
                    break
                await asyncio.sleep(0.1)
            assert logs.stdout == "ready\n"
            assert (await sandbox.process.get_session_command("s", started.cmd_id)).exit_code is None
            await sandbox.process.delete_session("s")

            await sandbox.fs.upload_files([FileUpload(source=b"async bytes", destination="/workspace/a.bin")])
            await sandbox.stop()
            assert sandbox.state == SandboxState.STOPPED
            found = [s async for s in daytona.list(ListSandboxesQuery(labels={"task": task}))]
            assert [s.id for s in found] == [sandbox.id]
            await found[0].start()
            assert await found[0].fs.download_file("/workspace/a.bin") == b"async bytes"
        finally:
            await sandbox.delete()
        with pytest.raises(DaytonaNotFoundError):
            await daytona.get(sandbox.id)


async def test_async_client_bad_key_is_an_authentication_error(daytona_service: DaytonaService) -> None:
    async with AsyncDaytona(daytona_service.config(key=secrets.token_hex(32))) as daytona:
        with pytest.raises(DaytonaAuthenticationError):
            await daytona.get("anything")


async def test_async_client_follows_session_logs_live_and_sends_input(daytona_service: DaytonaService) -> None:
    """``get_session_command_logs_async`` (the toolbox's log WebSocket) hands output over as the
    command writes it, both streams apart; ``send_session_command_input`` reaches its stdin."""
    async with AsyncDaytona(daytona_service.config()) as daytona:
        sandbox = await daytona.create(CreateSandboxFromSnapshotParams())
        try:
            await sandbox.process.create_session("live")
            script = "echo first; echo oops >&2; read line; echo got:$line; exit 3"
            started = await sandbox.process.execute_session_command(
                "live", SessionExecuteRequest(command=script, run_async=True)
            )
            out: list[str] = []
            err: list[str] = []
            first = asyncio.Event()

            def on_stdout(text: str) -> None:
                out.append(text)
                if "first\n" in "".join(out):
                    first.set()

            follow = asyncio.create_task(
                sandbox.process.get_session_command_logs_async("live", started.cmd_id, on_stdout, err.append)
            )
            # The command waits for input that is sent only once its first line arrived: output
            # held back until the end would never arrive, and this would time out.
            await asyncio.wait_for(first.wait(), 30)
            await sandbox.process.send_session_command_input("live", started.cmd_id, "hello\n")
            await asyncio.wait_for(follow, 30)
            assert "".join(out) == "first\ngot:hello\n" and "".join(err) == "oops\n"
            for _ in range(50):
                command = await sandbox.process.get_session_command("live", started.cmd_id)
                if command.exit_code is not None:
                    break
                await asyncio.sleep(0.1)
            assert command.exit_code == 3
            with pytest.raises(DaytonaNotFoundError):
                await sandbox.process.send_session_command_input("live", "000000000000", "x\n")
        finally:
            await sandbox.delete()
