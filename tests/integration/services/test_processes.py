"""Background processes on every provider in ``PROVIDER_FACTORIES`` (the service over the provider contract)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from app.errors import ProcessConflict, ProcessNotFound
from app.providers.base import OutputChunk, Provider
from app.schemas.processes import ProcessView, StartProcessRequest
from app.services.processes import ProcessService
from app.settings import Settings
from app.storage.state.sandboxes import SandboxRecord
from tests.integration.providers.test_conformance import create


@pytest.fixture
async def processes(provider: Provider) -> AsyncIterator[tuple[ProcessService, str]]:
    sandbox = await create(provider)
    now = datetime.now(UTC)
    record = SandboxRecord(
        id="sbx_proc", provider=provider.name, status="running", created_at=now, updated_at=now,
        provider_object_id=sandbox.provider_object_id,
    )  # fmt: skip

    async def running(any_id: str) -> SandboxRecord:
        return record

    service = ProcessService(Settings.load(api_secrets=[]), provider, running)
    try:
        yield service, record.id
    finally:
        await service.aclose()


async def exited(service: ProcessService, sandbox_id: str, pid: str) -> ProcessView:
    for _ in range(300):
        view = await service.get(sandbox_id, pid)
        if view.status == "exited":
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


async def test_exit_code_logs_and_offsets(processes: tuple[ProcessService, str]) -> None:
    service, sandbox_id = processes
    view = await service.start(sandbox_id, StartProcessRequest(command="echo out; echo err >&2; exit 3"))
    done = await exited(service, sandbox_id, view.pid)
    assert (done.exit_code, done.stdout_bytes, done.stderr_bytes) == (3, 4, 4)
    assert b"".join([c async for c in await service.read_log(sandbox_id, view.pid, "stdout", 0)]) == b"out\n"
    assert b"".join([c async for c in await service.read_log(sandbox_id, view.pid, "stderr", 2)]) == b"r\n"
    assert [p.pid for p in await service.list(sandbox_id)] == [view.pid]


async def test_stdin_signal_and_delete(processes: tuple[ProcessService, str]) -> None:
    service, sandbox_id = processes
    cat = await service.start(sandbox_id, StartProcessRequest(command=["cat"]))
    await service.write_stdin(sandbox_id, cat.pid, b"fed\n", close=True)
    assert (await exited(service, sandbox_id, cat.pid)).exit_code == 0
    assert b"".join([c async for c in await service.read_log(sandbox_id, cat.pid, "stdout", 0)]) == b"fed\n"
    with pytest.raises(ProcessConflict):
        await service.write_stdin(sandbox_id, cat.pid, b"late", close=False)

    sleeper = await service.start(sandbox_id, StartProcessRequest(command=["sleep", "300"]))
    await service.signal(sandbox_id, sleeper.pid, "INT")
    assert (await exited(service, sandbox_id, sleeper.pid)).exit_code == 128 + 2
    await service.delete(sandbox_id, sleeper.pid)
    assert not service._held, "a deleted process's supervisor (and the exec holding it) ends"
    with pytest.raises(ProcessNotFound):
        await service.get(sandbox_id, sleeper.pid)


async def test_follow_until_exit(processes: tuple[ProcessService, str]) -> None:
    service, sandbox_id = processes
    script = "echo one; echo two >&2; sleep 0.5; echo three; exit 4"
    view = await service.start(sandbox_id, StartProcessRequest(command=script))
    items = [item async for item in await service.follow(sandbox_id, view.pid, {"stdout": 0, "stderr": 0})]
    final = items[-1]
    assert isinstance(final, ProcessView) and final.exit_code == 4
    chunks = [i for i in items[:-1] if isinstance(i, OutputChunk)]
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"one\nthree\n"
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"two\n"
