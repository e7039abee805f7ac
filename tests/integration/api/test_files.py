"""Every file refusal is a clear 4xx with a machine code, on real sandboxes (local bubblewrap and Docker)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.auth import make_token
from app.client import SandboxClient
from app.provider_settings import DockerSettings
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.docker import BASE_IMAGE
from tests.support import missing_component

Service = tuple[Any, httpx.AsyncClient, SandboxClient]


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def real(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], provider_workdir: Path
) -> AsyncIterator[tuple[Service, str, str]]:
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
    async with serve_in_process(settings) as service:
        _, _, client = service
        sandbox = await client.create(network="none")
        try:
            yield service, sandbox["id"], request.param
        finally:
            await client.delete(sandbox["id"])


def _auth(app: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app.state.services.settings.resolved_secrets()[0])}"}


async def _put(service: Service, sid: str, path: str, body: bytes = b"x") -> httpx.Response:
    app, raw, _ = service
    return await raw.put(f"/v1/sandboxes/{sid}/files", params={"path": path}, content=body, headers=_auth(app))


async def _get(service: Service, sid: str, path: str) -> httpx.Response:
    app, raw, _ = service
    return await raw.get(f"/v1/sandboxes/{sid}/files", params={"path": path}, headers=_auth(app))


def _code(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["success"] is False and body["error"]
    return response.status_code, str(body["code"])


async def _listing(client: SandboxClient, sid: str, directory: str) -> list[str]:
    result = await client.exec(sid, ["sh", "-c", f'ls -A1 "{directory}" 2>/dev/null; true'])
    return sorted(result["stdout"].split())


async def test_long_names_up_to_the_filesystem_limit_work_and_longer_ones_are_400(
    real: tuple[Service, str, str],
) -> None:
    service, sid, _provider = real
    client = service[2]
    fits = "n" * 250  # the temporary name must never be what fails
    assert (await _put(service, sid, f"/workspace/{fits}", b"ok")).status_code == 204
    assert (await _get(service, sid, f"/workspace/{fits}")).content == b"ok"
    too_long = await _put(service, sid, "/workspace/" + "n" * 256)
    assert _code(too_long) == (400, "name_too_long")
    assert await _listing(client, sid, "/workspace") == [fits]  # nothing else was written


async def test_writing_onto_a_directory_or_a_read_only_place_is_refused(real: tuple[Service, str, str]) -> None:
    service, sid, provider = real
    client = service[2]
    assert _code(await _put(service, sid, "/workspace")) == (400, "is_a_directory")
    assert await _listing(client, sid, "/workspace") == []  # not moved into the directory
    if provider == "local":  # system directories are read-only binds (a docker sandbox's root may write them)
        for path in ("/usr/bin/x", "/etc/x"):
            status, code = _code(await _put(service, sid, path))
            assert status == 403 and code in ("read_only_path", "permission_denied"), (path, code)


async def test_reading_only_serves_regular_files_the_sandbox_user_may_read(real: tuple[Service, str, str]) -> None:
    service, sid, provider = real
    client = service[2]
    assert _code(await _get(service, sid, "/workspace/missing")) == (404, "file_not_found")
    assert _code(await _get(service, sid, "/workspace")) == (400, "is_a_directory")
    assert _code(await _get(service, sid, "/dev/zero")) == (400, "not_a_regular_file")
    await client.exec(sid, ["mkfifo", "/workspace/pipe"])
    assert _code(await _get(service, sid, "/workspace/pipe")) == (400, "not_a_regular_file")
    if provider == "local":  # the sandbox user is not root there: the host's /etc/shadow is not its to read
        assert _code(await _get(service, sid, "/etc/shadow")) == (403, "permission_denied")


async def test_a_symlink_out_of_the_sandbox_in_the_path_writes_nothing(real: tuple[Service, str, str]) -> None:
    service, sid, _provider = real
    client = service[2]
    await client.exec(sid, ["ln", "-s", "/nonexistent-outside-the-sandbox", "/workspace/l"])
    status, code = _code(await _put(service, sid, "/workspace/l/x", b"payload"))
    assert status == 400 and code in ("path_conflict", "not_a_directory", "file_error"), code
    assert await _listing(client, sid, "/workspace") == ["l"]
