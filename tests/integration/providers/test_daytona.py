"""The ``daytona`` provider's own behaviour, through the real SDK against the local stub.

The stub (``tests/fixtures/daytona_stub.py``) serves the Daytona endpoints the
provider uses, backed by local bubblewrap sandboxes:

    control plane  POST/GET /api/sandbox, GET/DELETE /api/sandbox/{id},
                   POST /api/sandbox/{id}/start|stop|recover,
                   GET /api/sandbox/{id}/toolbox-proxy-url
    toolbox        POST /toolbox/{id}/process/execute,
                   POST/GET/DELETE /toolbox/{id}/process/session[/{sid}],
                   POST /toolbox/{id}/process/session/{sid}/exec,
                   GET /toolbox/{id}/process/session/{sid}/command/{cid},
                   GET /toolbox/{id}/files/info, POST /toolbox/{id}/files/folder,
                   DELETE /toolbox/{id}/files, POST /toolbox/{id}/files/bulk-download,
                   POST /toolbox/{id}/files/bulk-upload

Covered here: auth failures fail fast (one request), transient failures are
retried then succeed (or end as ``ProviderUnavailable``), a task's stopped
sandbox is resumed with its files, a hung exec ends at the client deadline
with 124, an oversized disk is refused before any request, and a sandbox in
Daytona's ``error`` state is recovered (recoverable) or replaced (not).
The rest of the contract runs in the provider conformance suite.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SandboxNotFound,
    SandboxNotRunning,
    UnsupportedSpec,
)
from app.providers.base import TIMEOUT_EXIT_CODE, Resources, SandboxSpec
from tests.fixtures.daytona import daytona_stack

pytestmark = pytest.mark.slow


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read(provider: object, ref: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in provider.read_file(ref, path)])  # type: ignore[attr-defined]


async def test_auth_failure_fails_fast_without_retries(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        stub.fail_next("POST", "/api/sandbox", 401)
        with pytest.raises(ProviderAuthError):
            await provider.create(SandboxSpec(sandbox_id="sbx_auth"))
        assert stub.count("POST", "/api/sandbox") == 1
        stub.fail_next("GET", "/api/sandbox", 403)
        with pytest.raises(ProviderAuthError):
            await provider.list()
        assert stub.count("GET", "/api/sandbox") == 1


async def test_transient_failures_are_retried_then_succeed(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        created = await provider.create(SandboxSpec(sandbox_id="sbx_retry", labels={"r": "1"}))
        stub.fail_next("GET", "/api/sandbox", 503, count=2)
        found = await provider.list({"r": "1"})
        assert [s.provider_object_id for s in found] == [created.provider_object_id]
        assert stub.count("GET", "/api/sandbox") == 3
        # A create answered 503 twice is retried with the same name: one sandbox results.
        stub.fail_next("POST", "/api/sandbox", 503, count=2)
        again = await provider.create(SandboxSpec(sandbox_id="sbx_retry2", labels={"r": "2"}))
        assert [s.provider_object_id for s in await provider.list({"r": "2"})] == [again.provider_object_id]


async def test_persistent_outage_ends_as_unavailable(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir, attempts=3) as (provider, stub):
        stub.fail_next("GET", "/api/sandbox", 502, count=10)
        with pytest.raises(ProviderUnavailable):
            await provider.list()
        assert stub.count("GET", "/api/sandbox") == 3


async def test_stopped_task_sandbox_is_resumed_with_its_files(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        spec = SandboxSpec(sandbox_id="sbx_task1", labels={"task": "x"})
        first = await provider.create(spec)
        ref = first.provider_object_id
        await provider.write_file(ref, "/workspace/progress.txt", _chunks(b"step 3 of 5"))
        await provider.stop(ref)
        assert [s.status for s in await provider.list({"task": "x"})] == ["stopped"]

        resumed = await provider.resume_or_create(
            SandboxSpec(sandbox_id="sbx_task2", labels={"task": "x"}), {"task": "x"}
        )
        assert resumed.provider_object_id == ref
        assert resumed.status == "running"
        assert await _read(provider, ref, "/workspace/progress.txt") == b"step 3 of 5"
        assert stub.count("POST", "/api/sandbox") == 1, "resuming must not create a second sandbox"


async def test_hung_exec_ends_at_the_client_deadline(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir, exec_grace=0.5) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_hang"))).provider_object_id
        stub.hang_exec = True
        started = time.monotonic()
        result = await provider.exec(ref, ["sleep", "100"], timeout=1.0)
        elapsed = time.monotonic() - started
        assert (result.exit_code, result.timed_out) == (TIMEOUT_EXIT_CODE, True)
        assert elapsed < 1.0 + 0.5 + 2.0, f"took {elapsed:.1f} s"
        stub.hang_exec = False
        assert (await provider.exec(ref, ["echo", "alive"], timeout=10)).stdout == b"alive\n"


async def test_disk_above_the_platform_maximum_is_refused(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        too_big = (provider.capabilities.max_disk_mb or 0) + 1
        with pytest.raises(UnsupportedSpec) as caught:
            await provider.create(SandboxSpec(sandbox_id="sbx_disk", resources=Resources(disk_mb=too_big)))
        assert caught.value.field == "resources.disk_mb"
        assert stub.count("POST", "/api/sandbox") == 0
        fits = await provider.create(SandboxSpec(sandbox_id="sbx_disk2", resources=Resources(disk_mb=2048, cpu=2)))
        assert (fits.resources.disk_mb, fits.resources.cpu) == (2048, 2)


async def test_error_state_is_recovered_when_recoverable(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_err1", labels={"task": "e1"}))).provider_object_id
        await provider.write_file(ref, "/workspace/keep", _chunks(b"kept"))
        stub.set_state(ref, "error", recoverable=True)
        assert await provider.status(ref) == "failed"

        resumed = await provider.resume_or_create(
            SandboxSpec(sandbox_id="sbx_err1b", labels={"task": "e1"}), {"task": "e1"}
        )
        assert resumed.provider_object_id == ref
        assert stub.count("POST", f"/api/sandbox/{ref}/recover") == 1
        assert await _read(provider, ref, "/workspace/keep") == b"kept"


async def test_error_state_is_replaced_when_not_recoverable(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_err2", labels={"task": "e2"}))).provider_object_id
        stub.set_state(ref, "error", recoverable=False)
        with pytest.raises(ProviderError):
            await provider.start(ref)

        replacement = await provider.resume_or_create(
            SandboxSpec(sandbox_id="sbx_err2b", labels={"task": "e2"}), {"task": "e2"}
        )
        assert replacement.provider_object_id != ref
        assert replacement.status == "running"
        with pytest.raises(SandboxNotFound):
            await provider.status(ref)
        assert [s.provider_object_id for s in await provider.list({"task": "e2"})] == [replacement.provider_object_id]


async def test_snapshot_images_and_their_fixed_resources(provider_workdir: Path) -> None:
    async with daytona_stack(provider_workdir) as (provider, stub):
        with pytest.raises(UnsupportedSpec) as caught:
            await provider.create(
                SandboxSpec(sandbox_id="sbx_snap", image="daytona-snapshot:py", resources=Resources(cpu=2))
            )
        assert caught.value.field == "resources.cpu"
        created = await provider.create(SandboxSpec(sandbox_id="sbx_snap2", image="daytona-snapshot:py"))
        assert created.status == "running"
        record = stub.sandboxes[created.provider_object_id].body
        assert record["snapshot"] == "py" and "buildInfo" not in record


async def test_port_endpoint_is_daytonas_preview_link_with_its_token(provider_workdir: Path) -> None:
    from tests.fixtures.daytona_stub import PREVIEW_TOKEN

    async with daytona_stack(provider_workdir) as (provider, stub):
        ref = (await provider.create(SandboxSpec(sandbox_id="sbx_preview"))).provider_object_id
        endpoint = await provider.port_endpoint(ref, 3000)
        assert endpoint.url == "http://127.0.0.1:3000"
        assert endpoint.headers == {"X-Daytona-Preview-Token": PREVIEW_TOKEN}
        assert stub.count("GET", rf"/api/sandbox/{ref}/ports/3000/preview-url") == 1
        await provider.stop(ref)
        with pytest.raises(SandboxNotRunning):
            await provider.port_endpoint(ref, 3000)
