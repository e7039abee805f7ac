"""Preview URLs end to end: a dev server inside a real sandbox (local bwrap, docker), without a network,
reached through the service's proxy in both URL forms: GET, 100 MiB each way, SSE, WebSocket echo.

The server is ``tests/fixtures/preview_upstream.py``, copied into the sandbox and
started as a background process, as a coding agent would start ``npm run dev``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.client import SandboxClient
from tests.fixtures.app import LiveServer, free_port
from tests.fixtures.docker import SANDBOX_IMAGE
from tests.fixtures.preview_upstream import __file__ as UPSTREAM_SCRIPT
from tests.fixtures.preview_upstream import pattern
from tests.support import missing_component

DOMAIN = "preview.test"
PORT = 8000
BIG = 100 << 20


@dataclass
class Preview:
    client: SandboxClient
    server: LiveServer
    sandbox_id: str
    view: dict[str, object]

    @property
    def path_base(self) -> str:
        return f"{self.server.url}/p/{self.view['token']}"

    @property
    def host(self) -> str:
        return f"{PORT}-{self.view['id']}.{DOMAIN}"


BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


def backend_server(
    request: pytest.FixtureRequest, live_server_factory: Callable[..., LiveServer], api_secret: str, **settings: str
) -> LiveServer:
    """A live service on ``request.param``'s provider (local bubblewrap or docker)."""
    if request.param == "local":
        if shutil.which("bwrap") is None:
            missing_component("bubblewrap (bwrap) is not installed")
        return live_server_factory(api_secret, **settings)
    engine = request.getfixturevalue("docker_engine")
    if not engine.has_image(SANDBOX_IMAGE):
        missing_component(f"image {SANDBOX_IMAGE} is not built (scripts/docker-setup.sh builds it)")
    return live_server_factory(
        api_secret, "docker", SANDBOX_BASE_IMAGE=SANDBOX_IMAGE, SANDBOX_DOCKER_PULL="never", **settings
    )


@pytest.fixture(params=BACKENDS)
async def preview(
    request: pytest.FixtureRequest, live_server_factory: Callable[..., LiveServer], api_secret: str
) -> AsyncIterator[Preview]:
    settings = {"SANDBOX_PREVIEW_DOMAIN": DOMAIN, "SANDBOX_PREVIEW_COOKIE_SECURE": "false"}
    server = backend_server(request, live_server_factory, api_secret, **settings)
    await asyncio.to_thread(server.start)
    async with SandboxClient(server.url, api_secret.encode()) as client:
        sandbox = await client.create(network="none")
        try:
            await client.upload(sandbox["id"], "/workspace/upstream.py", Path(UPSTREAM_SCRIPT))
            await client.start_process(sandbox["id"], ["python3", "/workspace/upstream.py", str(PORT)])
            view = await client.create_preview(sandbox["id"], PORT)
            found = Preview(client, server, sandbox["id"], view)
            await wait_until_served(found)
            yield found
        finally:
            await client.delete(sandbox["id"])


async def wait_until_served(preview: Preview) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            answer = await http.get(f"{preview.path_base}/")
            if answer.status_code == 200:
                return
            assert answer.json()["code"] == "preview_upstream_unreachable", answer.text
            await asyncio.sleep(0.05)
    raise AssertionError("the dev server in the sandbox never answered through the proxy")


def service_rss(server: LiveServer) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_both_url_forms_reach_the_sandbox_and_nothing_else_does(preview: Preview) -> None:
    async with httpx.AsyncClient() as http:
        by_path = await http.get(f"{preview.path_base}/echo?q=1")
        assert by_path.status_code == 200 and json.loads(by_path.text)["path"] == "/echo?q=1"
        token = str(preview.view["token"])
        first = await http.get(f"{preview.server.url}/echo?preview_token={token}", headers={"Host": preview.host})
        assert first.status_code == 302 and "HttpOnly" in first.headers["set-cookie"]
        cookie = first.headers["set-cookie"].split(";", 1)[0]
        by_host = await http.get(f"{preview.server.url}/echo", headers={"Host": preview.host, "Cookie": cookie})
        assert by_host.status_code == 200
        received = {k.lower(): v for k, v in by_host.json()["headers"]}
        assert "cookie" not in received and received["x-forwarded-host"] == preview.host
        # Isolated: the port is not on the host's loopback (the sandbox has no network).
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", PORT), timeout=1):
            pass


async def test_100_mib_each_way_streamed(preview: Preview) -> None:
    expected = hashlib.sha256(pattern(BIG)).hexdigest()
    before = service_rss(preview.server)

    async def body() -> AsyncIterator[bytes]:
        block = pattern(1 << 20)
        for _ in range(BIG >> 20):
            yield block

    async with httpx.AsyncClient(timeout=120) as http:
        uploaded = await http.post(f"{preview.path_base}/upload", content=body())  # chunked
        assert uploaded.json() == {"sha256": hashlib.sha256(pattern(1 << 20) * 100).hexdigest(), "size": BIG}
        digest, size = hashlib.sha256(), 0
        async with http.stream(
            "GET", f"{preview.server.url}/download?size={BIG}",
            headers={"Host": preview.host, "X-Preview-Token": str(preview.view["token"])},
        ) as answer:  # fmt: skip
            assert answer.status_code == 200
            async for chunk in answer.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
    assert (size, digest.hexdigest()) == (BIG, expected)
    grown = service_rss(preview.server) - before
    assert grown < 40 << 20, f"the service grew by {grown >> 20} MiB while relaying 200 MiB"


async def test_sse_events_arrive_as_they_are_sent(preview: Preview) -> None:
    arrivals: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        started = time.monotonic()
        async with http.stream("GET", f"{preview.path_base}/sse?n=3&delay=0.5") as answer:
            assert answer.headers["content-type"] == "text/event-stream"
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 3
    assert arrivals[0] < 0.4 and arrivals[1] - arrivals[0] > 0.3  # one by one, not at the end


async def test_websocket_echo_through_both_forms(preview: Preview) -> None:
    url = preview.server.url.replace("http://", "ws://")
    async with connect(f"{url}/p/{preview.view['token']}/ws", subprotocols=["echo"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "echo"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4001

    host, port = preview.server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    token = preview.view["token"]
    async with connect(f"ws://{preview.host}/ws?preview_token={token}", sock=sock) as ws:
        await ws.send("by host")
        assert await ws.recv() == "by host"
    # Refused before the upgrade with the status an HTTP request gets, not a bare 403.
    refused = socket.create_connection((host, int(port)))
    with pytest.raises(InvalidStatus) as no_token:
        async with connect(f"ws://{preview.host}/ws", sock=refused):
            pass
    assert no_token.value.response.status_code == 401
    nothing = await preview.client.create_preview(preview.sandbox_id, PORT + 1)
    with pytest.raises(InvalidStatus) as unreachable:
        async with connect(f"{url}/p/{nothing['token']}/ws"):
            pass
    assert unreachable.value.response.status_code == 502
    assert json.loads(unreachable.value.response.body)["code"] == "preview_upstream_unreachable"


async def test_a_revoked_preview_closes_its_open_websocket(preview: Preview) -> None:
    url = preview.server.url.replace("http://", "ws://")
    async with connect(f"{url}/p/{preview.view['token']}/ws") as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        await preview.client.revoke_preview(preview.sandbox_id, str(preview.view["id"]))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)  # within the proxy's recheck period
        assert ws.close_code == 4404


@pytest.fixture(params=BACKENDS)
def host_network_server(
    request: pytest.FixtureRequest, live_server_factory: Callable[..., LiveServer], api_secret: str
) -> LiveServer:
    return backend_server(request, live_server_factory, api_secret)


async def test_a_host_network_preview_reaches_only_what_the_sandbox_listens_on(
    host_network_server: LiveServer, api_secret: str
) -> None:
    """On the host network a sandbox's port is a host port: the proxy connects only while the
    sandbox's own process listens there (local: its uid; docker, whose processes run as root
    like host services: a process in its PID namespace), never to another host service."""
    server = host_network_server
    await asyncio.to_thread(server.start)
    ours, host_only = free_port(), free_port()
    bystander = socket.create_server(("127.0.0.1", host_only))  # a host service, not the sandbox's
    bystander.settimeout(0.5)
    async with SandboxClient(server.url, api_secret.encode()) as client, httpx.AsyncClient() as http:
        sandbox = await client.create(network="host")
        try:
            await client.upload(sandbox["id"], "/workspace/upstream.py", Path(UPSTREAM_SCRIPT))
            await client.start_process(sandbox["id"], ["python3", "/workspace/upstream.py", str(ours)])
            served = await client.create_preview(sandbox["id"], ours)
            for _ in range(200):
                if (await http.get(f"{server.url}/p/{served['token']}/")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the sandbox's dev server never answered through the proxy")
            other = await client.create_preview(sandbox["id"], host_only)
            refused = await http.get(f"{server.url}/p/{other['token']}/")
            assert refused.status_code == 502 and refused.json()["code"] == "preview_upstream_unreachable"
            with pytest.raises(TimeoutError):
                bystander.accept()  # the proxy never connected to the host's service
        finally:
            bystander.close()
            await client.delete(sandbox["id"])
