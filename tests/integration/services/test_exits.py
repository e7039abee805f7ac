"""An entry command that ends on its own: the record follows within about a second (local and docker)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.client import SandboxClient
from app.provider_settings import DockerSettings
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.docker import BASE_IMAGE
from tests.support import missing_component


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def client(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], provider_workdir: Path
) -> AsyncIterator[tuple[Any, SandboxClient]]:
    if request.param == "local":
        if shutil.which("bwrap") is None:
            missing_component("bubblewrap (bwrap) is not installed")
        settings = make_settings(provider="local", data_dir=provider_workdir / "data")
    else:
        request.getfixturevalue("docker_engine")
        settings = make_settings(
            provider="docker",
            data_dir=provider_workdir / "data",
            base_image=BASE_IMAGE,
            docker=DockerSettings(pull="never"),
        )
    async with serve_in_process(settings) as (app, _raw, sandbox_client):
        try:
            yield app, sandbox_client
        finally:
            for sandbox in await sandbox_client.list_sandboxes():
                await sandbox_client.delete(sandbox["id"])


async def _status_after(client: SandboxClient, sandbox_id: str, wanted: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await client.get(sandbox_id))["status"] == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sandbox_id} did not become {wanted}")


async def test_an_entry_command_that_fails_marks_the_sandbox_failed_with_its_output(
    client: tuple[Any, SandboxClient],
) -> None:
    app, api = client
    sandbox = await api.create(command=["sh", "-c", "sleep 1; echo 'it broke' >&2; exit 3"])
    await _status_after(api, sandbox["id"], "failed", timeout=15)
    events = await app.state.services.sandboxes.events(sandbox["id"])
    exited = [e for e in events if e["kind"] == "exited"]
    assert len(exited) == 1 and exited[0]["detail"]["exit_code"] == 3
    assert "it broke" in exited[0]["detail"]["output"]
    assert "exited with status 3" in ((await api.get(sandbox["id"]))["error"] or "")


async def test_an_entry_command_that_ends_well_stops_the_sandbox_and_a_stop_is_no_exit(
    client: tuple[Any, SandboxClient],
) -> None:
    app, api = client
    done = await api.create(command=["sh", "-c", "sleep 1; exit 0"])
    await _status_after(api, done["id"], "stopped", timeout=15)
    idle = await api.create()
    await api.stop(idle["id"])
    await asyncio.sleep(1.5)  # time for an exit event, were one (wrongly) reported
    assert (await api.get(idle["id"]))["status"] == "stopped"
    kinds = [e["kind"] for e in await app.state.services.sandboxes.events(idle["id"])]
    assert "exited" not in kinds and kinds[-1] == "stopped"
    # Resumed and stopped again: still only the service's own stops.
    await api.start(idle["id"])
    await api.stop(idle["id"])
    assert "exited" not in [e["kind"] for e in await app.state.services.sandboxes.events(idle["id"])]
