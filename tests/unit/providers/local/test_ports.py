"""Which process of a network-less local sandbox the proxy joins to reach a port (``app.providers.local.ports``).

A real network namespace, made with ``unshare`` and run as a uid of its own, as a
sandbox's exec is: a short-lived process first (lowest pid), the server after it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.providers.local import procs
from app.providers.local.ports import listener_pid
from app.providers.netns import open_in_namespace
from app.providers.procnet import holder, listening_inodes

PYTHON = "/usr/bin/python3"
PORT = 8000


@dataclass
class Namespace:
    uid: int
    #: The namespace's first process (its lowest pid): it exits after a second.
    first: subprocess.Popen[bytes]
    #: The server it started, which holds the listening socket.
    server: int


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "setpriv", "ip")):
        pytest.skip("needs root, unshare, setpriv and ip to make a sandbox-like network namespace")
    if not Path(PYTHON).exists():
        pytest.skip(f"needs {PYTHON} for the server inside the namespace")
    uid = random.randrange(1_000_000, 100_000_000)
    server = f"import socket, time; s = socket.create_server(('127.0.0.1', {PORT})); time.sleep(30)"
    # Like the process supervisor of a sandbox exec: a shell first, the command as its child.
    script = f'{PYTHON} -c "{server}" & exec sleep 1'
    first = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
         "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c", script],
    )  # fmt: skip
    try:
        found = None
        for _ in range(250):
            found = holder(procs.children(first.pid), listening_inodes(first.pid, PORT))
            if found is not None:
                break
            time.sleep(0.02)
        assert found is not None, "the server in the namespace never listened"
        yield Namespace(uid, first, found)
    finally:
        first.kill()
        first.wait()
        for pid in procs.children(first.pid) + ([found] if found else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


async def test_the_server_is_joined_not_the_namespace_s_first_process(namespace: Namespace) -> None:
    # The first process has the lowest pid, as a supervisor's short-lived ``sleep`` has once the
    # pid counter wrapped: joining through it fails once it is gone, though the server still serves.
    pid = listener_pid(namespace.uid, PORT)
    assert pid == namespace.server != namespace.first.pid
    namespace.first.wait(10)
    (await open_in_namespace(pid, PORT)).close()


def test_nothing_listens_for_another_uid_or_port(namespace: Namespace) -> None:
    assert listener_pid(namespace.uid + 1, PORT) is None
    assert listener_pid(namespace.uid, PORT + 1) is None
