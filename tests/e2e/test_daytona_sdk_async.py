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
