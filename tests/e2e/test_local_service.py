"""The real service (``sandboxctl serve``) on the local provider, driven like a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.client import ApiError, SandboxClient
from tests.fixtures.app import ROOT, LiveServer


def sandboxctl(server: LiveServer, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "SANDBOX_URL": server.url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def server(live_server_factory: Callable[..., LiveServer], api_secret: str) -> LiveServer:
    server = live_server_factory(api_secret)
    server.start()
    return server


def test_readme_cli_flow(server: LiveServer, tmp_path: Path) -> None:
    token = sandboxctl(server, "token")
    assert token.returncode == 0 and "." in token.stdout
    created = sandboxctl(server, "create", "--label", "task=demo")
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()

    hi = sandboxctl(server, "exec", sandbox_id, "--", "echo", "hi")
    assert (hi.returncode, hi.stdout) == (0, "hi\n")
    failing = sandboxctl(server, "exec", sandbox_id, "--", "sh", "-c", "exit 7")
    assert failing.returncode == 7
    timed = sandboxctl(server, "exec", sandbox_id, "--timeout", "1", "--", "sleep", "30")
    assert timed.returncode == 124 and "timed out" in timed.stderr

    source = tmp_path / "hello.py"
    source.write_text('print("from the host")\n')
    assert sandboxctl(server, "cp", str(source), f"{sandbox_id}:/workspace/hello.py").returncode == 0
    ran = sandboxctl(server, "exec", sandbox_id, "--", "python3", "/workspace/hello.py")
    assert ran.stdout == "from the host\n", ran.stderr

    assert sandboxctl(server, "stop", sandbox_id).returncode == 0
    assert "not running" in sandboxctl(server, "exec", sandbox_id, "--", "true").stderr
    assert sandboxctl(server, "start", sandbox_id).returncode == 0
    back = tmp_path / "back.py"
    assert sandboxctl(server, "cp", f"{sandbox_id}:/workspace/hello.py", str(back)).returncode == 0
    assert back.read_text() == source.read_text()

    listed = sandboxctl(server, "ls", "--label", "task=demo")
    assert sandbox_id in listed.stdout
    assert sandboxctl(server, "rm", sandbox_id).returncode == 0
    gone = sandboxctl(server, "exec", sandbox_id, "--", "true")
    assert gone.returncode != 0
    assert gone.stderr.strip() == f"sandboxctl: sandbox {sandbox_id!r} not found (sandbox_not_found)"


def test_cli_errors_are_one_line(server: LiveServer) -> None:
    bad = sandboxctl(server, "create", "--label", "bad key=x")
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1
    unreachable = sandboxctl(server, "--url", "http://127.0.0.1:9", "ls")
    assert unreachable.returncode != 0
    assert unreachable.stderr.startswith("sandboxctl: cannot reach the service")


async def test_sandbox_survives_a_service_crash(server: LiveServer, api_secret: str) -> None:
    async with SandboxClient(server.url, api_secret.encode()) as client:
        sandbox = await client.create(labels={"task": "restart"}, command=["sh", "-c", "while :; do sleep 1; done"])
        await client.upload_stream(sandbox["id"], "state.txt", b"kept")
    server.kill()
    server.start()
    async with SandboxClient(server.url, api_secret.encode()) as client:
        [found] = await client.list_sandboxes({"task": "restart"})
        assert (found["id"], found["status"]) == (sandbox["id"], "running")
        result = await client.exec(sandbox["id"], ["cat", "state.txt"])
        assert result["stdout"] == "kept"
        await client.delete(sandbox["id"])


async def test_sandbox_cannot_see_the_service(server: LiveServer, api_secret: str) -> None:
    data_dir = Path(server.env["SANDBOX_DATA_DIR"])
    (data_dir / "canary-secret").write_text("do-not-leak")
    os.chmod(data_dir / "canary-secret", 0o644)
    async with SandboxClient(server.url, api_secret.encode()) as client:
        first = await client.create()
        second = await client.create()
        await client.upload_stream(second["id"], "mine.txt", b"private")
        probe = await client.exec(
            first["id"],
            [
                "sh",
                "-c",
                f"cat {data_dir}/canary-secret; ls {data_dir}; cat {data_dir}/state.db | head -c 10; "
                "env; ps -e -o pid=,comm=; touch /usr/x /etc/x; id -u",
            ],
        )
        assert "do-not-leak" not in probe["stdout"]
        assert api_secret not in probe["stdout"] + probe["stderr"]
        assert "SANDBOX_API_SECRET" not in probe["stdout"]
        assert "uvicorn" not in probe["stdout"] and "python" not in probe["stdout"]
        assert probe["stdout"].strip().splitlines()[-1] == "1000"
        assert "Read-only file system" in probe["stderr"]
        with pytest.raises(ApiError) as err:
            async for _ in client.download(first["id"], "/workspace/mine.txt"):
                pass
        assert err.value.status == 404
        for sandbox in (first, second):
            await client.delete(sandbox["id"])
