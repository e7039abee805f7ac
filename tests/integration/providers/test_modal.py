"""The ``modal`` provider's own behaviour, over ``FakeModal`` (real commands via the local provider).

The conformance suite covers the contract; these cover what is Modal's:
failing fast on bad credentials, bounded retries, one image build under
concurrency, 422 for stop/start, exec deadlines, native filesystem
snapshots and tunnels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.errors import BadRequest, ProviderAuthError, ProviderUnavailable, SandboxNotFound, UnsupportedSpec
from app.providers.base import TIMEOUT_EXIT_CODE, Resources, SandboxSpec
from tests.fixtures.modal import modal_settings, open_modal_with_fake

IMAGE = "debian:bookworm-slim"


@pytest.fixture
async def modal(provider_workdir: Path) -> AsyncIterator[tuple[Any, Any]]:
    """``(provider, fake)``, opened."""
    async with open_modal_with_fake(provider_workdir) as pair:
        yield pair


def sdk_errors() -> Any:
    import modal.exception

    return modal.exception


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_bad_credentials_fail_fast_without_retries(provider_workdir: Path) -> None:
    settings = modal_settings(provider_workdir / "data", token_secret="not-the-secret")
    async with open_modal_with_fake(provider_workdir, settings=settings, open_provider=False) as (provider, fake):
        started = time.monotonic()
        with pytest.raises(ProviderAuthError) as caught:
            await provider.aopen()
        assert caught.value.code == "provider_auth"
        assert fake.calls["App.lookup"] == 1, "an auth failure must not be retried"
        assert time.monotonic() - started < 1.0


async def test_transient_failure_is_retried_then_succeeds(modal: tuple[Any, Any]) -> None:
    provider, fake = modal
    errors = sdk_errors()
    fake.fail("Sandbox.create", errors.ConnectionError("connection reset"), errors.ServiceError("try again"))
    created = await provider.create(SandboxSpec(sandbox_id="sbx_retry"))
    assert fake.calls["Sandbox.create"] == 3
    assert await provider.status(created.provider_object_id) == "running"


async def test_persistent_outage_is_provider_unavailable_after_bounded_retries(modal: tuple[Any, Any]) -> None:
    provider, fake = modal
    errors = sdk_errors()
    fake.fail("Sandbox.create", *(errors.ConnectionError("down") for _ in range(10)))
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.create(SandboxSpec(sandbox_id="sbx_down"))
    assert caught.value.status_code == 503
    assert fake.calls["Sandbox.create"] == 4


async def test_one_image_build_under_twenty_concurrent_creates(modal: tuple[Any, Any]) -> None:
    provider, fake = modal
    specs = [SandboxSpec(sandbox_id=f"sbx_{i}", image=IMAGE) for i in range(20)]
    created = await asyncio.gather(*(provider.create(spec) for spec in specs))
    assert len({c.provider_object_id for c in created}) == 20
    assert fake.builds[IMAGE] == 1
    assert fake.calls["Image.build"] == 1
    assert all(c.image == IMAGE for c in created)


@pytest.mark.parametrize("operation", ["stop", "start"])
async def test_stop_and_start_are_unsupported(modal: tuple[Any, Any], operation: str) -> None:
    provider, _ = modal
    ref = (await provider.create(SandboxSpec(sandbox_id="sbx_s"))).provider_object_id
    with pytest.raises(UnsupportedSpec) as caught:
        await getattr(provider, operation)(ref)
    assert (caught.value.field, caught.value.provider, caught.value.status_code) == (operation, "modal", 422)
    assert "modal" in caught.value.message and operation in caught.value.message
    assert await provider.status(ref) == "running"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"resources": Resources(disk_mb=1024)}, "resources.disk_mb"),
        ({"network": "corp-net"}, "network"),
        ({"ttl_seconds": 8 * 24 * 3600}, "ttl_seconds"),
    ],
)
async def test_unsupported_requests_name_the_field(modal: tuple[Any, Any], fields: dict[str, Any], field: str) -> None:
    provider, fake = modal
    with pytest.raises(UnsupportedSpec) as caught:
        await provider.create(SandboxSpec(sandbox_id="sbx_u", **fields))
    assert (caught.value.field, caught.value.provider) == (field, "modal")
    assert fake.calls["Sandbox.create"] == 0


async def test_resources_and_defaults_are_mapped_once(modal: tuple[Any, Any]) -> None:
    provider, fake = modal
    created = await provider.create(
        SandboxSpec(sandbox_id="sbx_r", resources=Resources(cpu=1.5, memory_mb=768, gpu="A10G"), ttl_seconds=600)
    )
    assert created.resources == Resources(cpu=1.5, memory_mb=768, gpu="A10G")
    options = fake.sandboxes[created.provider_object_id].options
    assert (options["timeout"], options["gpu"], options["workdir"]) == (600, "A10G", "/workspace")
    listed = await provider.list()
    assert [s.resources for s in listed if s.provider_object_id == created.provider_object_id] == [created.resources]


async def test_exec_deadline_reports_124(modal: tuple[Any, Any]) -> None:
    provider, _ = modal
    ref = (await provider.create(SandboxSpec(sandbox_id="sbx_t"))).provider_object_id
    started = time.monotonic()
    result = await provider.exec(ref, ["sh", "-c", "echo started; sleep 30"], timeout=1.0)
    assert (result.exit_code, result.timed_out) == (TIMEOUT_EXIT_CODE, True)
    assert time.monotonic() - started < 10
    assert (await provider.exec(ref, ["echo", "alive"], timeout=10)).stdout == b"alive\n"


async def test_snapshot_filesystem_image_creates_a_sandbox_with_the_files(modal: tuple[Any, Any]) -> None:
    provider, _ = modal
    source = (await provider.create(SandboxSpec(sandbox_id="sbx_src"))).provider_object_id
    await provider.write_file(source, "/workspace/repo/README", chunks(b"built at abc123"))
    image_id = await provider.snapshot_filesystem(source)
    assert image_id.startswith("im-")
    restored = await provider.create(SandboxSpec(sandbox_id="sbx_dst", image=image_id))
    assert restored.image == image_id
    data = b"".join([c async for c in provider.read_file(restored.provider_object_id, "/workspace/repo/README")])
    assert data == b"built at abc123"


async def test_unknown_image_id_names_the_image_field(modal: tuple[Any, Any]) -> None:
    provider, _ = modal
    with pytest.raises(UnsupportedSpec) as caught:
        await provider.create(SandboxSpec(sandbox_id="sbx_i", image="im-doesnotexist"))
    assert caught.value.field == "image"


async def test_port_endpoint_is_the_tunnel_of_a_declared_port(modal: tuple[Any, Any]) -> None:
    provider, _ = modal
    ref = (
        await provider.create(SandboxSpec(sandbox_id="sbx_tun", labels={"modal.tunnel-ports": "4096"}))
    ).provider_object_id
    url = (await provider.port_endpoint(ref, 4096)).url
    assert url.startswith("https://") and "4096" in url
    with pytest.raises(BadRequest):
        await provider.port_endpoint(ref, 8080)


async def test_deleted_sandbox_is_gone(modal: tuple[Any, Any]) -> None:
    provider, fake = modal
    ref = (await provider.create(SandboxSpec(sandbox_id="sbx_d", labels={"k": "v"}))).provider_object_id
    await provider.delete(ref)
    assert fake.sandboxes[ref].terminated
    with pytest.raises(SandboxNotFound):
        await provider.exec(ref, ["true"], timeout=5)
    with pytest.raises(SandboxNotFound):
        await provider.delete(ref)
    assert await provider.list({"k": "v"}) == []
