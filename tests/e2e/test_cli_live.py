"""``sandboxctl`` exec (streamed), bg/ps/logs/kill and shell against the real service (local)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.test_local_service import sandboxctl
from tests.fixtures.app import LiveServer


@pytest.fixture
def server(live_server_factory: Callable[..., LiveServer], api_secret: str) -> Iterator[LiveServer]:
    server = live_server_factory(api_secret)
    server.start()
    yield server
    # A local sandbox outlives the service (its init is detached): delete what the test made.
    for sandbox in json.loads(sandboxctl(server, "ls", "--json").stdout):
        assert sandboxctl(server, "rm", sandbox["id"]).returncode == 0


def test_exec_streams_and_keeps_the_exit_code(server: LiveServer) -> None:
    sandbox_id = sandboxctl(server, "create", "--network", "none").stdout.strip()
    run = sandboxctl(server, "exec", sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (run.returncode, run.stdout, run.stderr) == (7, "out\n", "err\n")
    fed = sandboxctl(server, "exec", sandbox_id, "--stdin", "--", "cat", stdin="piped\n")
    assert (fed.returncode, fed.stdout) == (0, "piped\n")
    plain = sandboxctl(server, "exec", sandbox_id, "--no-stream", "--", "sh", "-c", "echo x; exit 2")
    assert (plain.returncode, plain.stdout) == (2, "x\n")


def test_background_processes_and_shell(server: LiveServer) -> None:
    sandbox_id = sandboxctl(server, "create", "--network", "none").stdout.strip()
    started = sandboxctl(server, "bg", sandbox_id, "--", "sh", "-c", "echo hello; exec sleep 300")
    assert started.returncode == 0, started.stderr
    pid = started.stdout.strip()
    listed = sandboxctl(server, "ps", sandbox_id)
    assert listed.stdout.startswith(f"{pid}\trunning\t"), listed
    for _ in range(100):
        if sandboxctl(server, "logs", sandbox_id, pid).stdout == "hello\n":
            break
        time.sleep(0.1)
    assert sandboxctl(server, "kill", sandbox_id, pid, "--signal", "KILL").returncode == 0
    followed = sandboxctl(server, "logs", "-f", sandbox_id, pid)
    assert (followed.returncode, followed.stdout) == (137, "hello\n")

    shell = sandboxctl(server, "shell", sandbox_id, stdin="echo in-shell-$((3 * 3))\nexit 6\n")
    assert shell.returncode == 6, shell.stderr
    assert "in-shell-9" in shell.stdout
