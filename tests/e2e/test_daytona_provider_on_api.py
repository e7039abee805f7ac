"""Both ends of the Daytona wire, ours: the ``daytona`` provider against this service's Daytona API.

One instance of the service can be another's Daytona: the provider (built
against Daytona's real SDK) drives the Daytona-compatible API of a real
service on the local provider, so the two sides' reading of the wire format
must agree: labels (the provider's own reserved ones included), exec with
its exit code, streams and deadline, files both ways, stop, start, and
resuming a task's stopped sandbox with its files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.providers.base import TIMEOUT_EXIT_CODE, SandboxSpec
from tests.fixtures.daytona_api import DaytonaService, provider_on_service

pytestmark = pytest.mark.slow


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_the_daytona_provider_runs_on_our_daytona_api(daytona_service: DaytonaService, tmp_path: Path) -> None:
    async with provider_on_service(daytona_service, tmp_path / "client", backoff_base=0.02) as provider:
        made = await provider.create(SandboxSpec(sandbox_id="sbx_onapi", labels={"task": "t9"}))
        ref = made.provider_object_id
        assert made.status == "running"
        result = await provider.exec(ref, ["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=20)
        assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
        timed = await provider.exec(ref, ["sleep", "30"], timeout=1)
        assert (timed.exit_code, timed.timed_out) == (TIMEOUT_EXIT_CODE, True)

        await provider.write_file(ref, "/workspace/progress.txt", _chunks(b"step 3 of 5"))
        await provider.stop(ref)
        assert await provider.status(ref) == "stopped"
        resumed = await provider.resume_or_create(
            SandboxSpec(sandbox_id="sbx_onapi2", labels={"task": "t9"}), {"task": "t9"}
        )
        assert (resumed.provider_object_id, resumed.status) == (ref, "running")
        read = b"".join([chunk async for chunk in provider.read_file(ref, "/workspace/progress.txt")])
        assert read == b"step 3 of 5"
        assert [s.provider_object_id for s in await provider.list({"task": "t9"})] == [ref]
        await provider.delete(ref)
        assert await provider.list({"task": "t9"}) == []
