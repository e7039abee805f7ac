"""Code written for the ``daytona`` SDK (sync client) runs unchanged against the service.

The real SDK, pointed at ``/daytona/api`` of a real service on the local
provider: the three usage patterns of the issue end to end (a persistent
sandbox found by label across stop/start; a session running a server while
other commands run; ``code_run`` and ``exec`` with a timeout), then every
covered method, and the SDK's own errors for bad keys, unknown ids and bad input.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from daytona import (
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaAuthenticationError,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaFileNotFoundError,
    DaytonaNotFoundError,
    DaytonaTimeoutError,
    FileDownloadRequest,
    FileUpload,
    Image,
    ListSandboxesQuery,
    Resources,
    Sandbox,
    SandboxState,
    SessionExecuteRequest,
)

from tests.fixtures.app import free_port
from tests.fixtures.daytona_api import DaytonaService

pytestmark = pytest.mark.slow


@pytest.fixture
def daytona(daytona_service: DaytonaService) -> Iterator[Daytona]:
    client = Daytona(daytona_service.config())
    yield client
    for sandbox in client.list():
        sandbox.delete()


def _new(daytona: Daytona, **params: object) -> Sandbox:
    return daytona.create(CreateSandboxFromSnapshotParams(**params))  # type: ignore[arg-type]


def test_persistent_sandbox_found_by_label_across_stop_and_start(
    daytona: Daytona, daytona_service: DaytonaService
) -> None:
    task = secrets.token_hex(4)
    first = _new(daytona, labels={"task": task}, auto_stop_interval=0, env_vars={"GREETING": "hi"})
    assert first.state == SandboxState.STARTED
    assert first.labels["task"] == task and first.auto_stop_interval == 0
    assert first.process.exec("echo $GREETING").result == "hi\n"
    first.fs.upload_file(b"step 3 of 5", "/workspace/progress.txt")
    first.stop()
    assert first.state == SandboxState.STOPPED

    # The next run of the agent: a new client finds the task's sandbox by label.
    again = Daytona(daytona_service.config())
    found = list(again.list(ListSandboxesQuery(labels={"task": task})))
    assert [s.id for s in found] == [first.id]
    sandbox = found[0]
    assert sandbox.state == SandboxState.STOPPED
    sandbox.start()
    assert sandbox.state == SandboxState.STARTED
    assert sandbox.fs.download_file("/workspace/progress.txt") == b"step 3 of 5"
    sandbox.refresh_data()
    assert sandbox.state == SandboxState.STARTED
    assert again.get(first.id).id == first.id

    sandbox.set_labels({"task": task, "stage": "review"})
    assert [s.id for s in again.list(ListSandboxesQuery(labels={"stage": "review"}))] == [first.id]
    sandbox.recover()  # a started sandbox: recover is a start, a no-op here
    sandbox.delete()
    with pytest.raises(DaytonaNotFoundError):
        again.get(first.id)


def test_session_runs_a_background_server_while_commands_execute(daytona: Daytona) -> None:
    sandbox = _new(daytona)
    port = free_port()
    sandbox.process.create_session("env")
    server = sandbox.process.execute_session_command(
        "env", SessionExecuteRequest(command=f"python3 -m http.server {port} --bind 127.0.0.1", run_async=True)
    )
    assert server.cmd_id and server.exit_code is None

    probe = f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/').status)\""
    deadline = time.monotonic() + 20
    while (answer := sandbox.process.exec(probe, timeout=10)).exit_code != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.result.strip() == "200", answer.result

    # Other commands run meanwhile; the session keeps its directory and exports between them.
    ran = sandbox.process.execute_session_command("env", SessionExecuteRequest(command="cd /tmp && export K=v"))
    assert ran.exit_code == 0
    shown = sandbox.process.execute_session_command("env", SessionExecuteRequest(command="pwd; echo $K; exit 4"))
    assert (shown.exit_code, shown.stdout) == (4, "/tmp\nv\n")
    assert sandbox.process.execute_session_command("env", SessionExecuteRequest(command="echo e >&2")).stderr == "e\n"

    status = sandbox.process.get_session_command("env", server.cmd_id)
    assert status.exit_code is None, "the server still runs"
    logs = sandbox.process.get_session_command_logs("env", server.cmd_id)
    assert "GET / HTTP" in logs.stderr and logs.output == logs.stdout + logs.stderr
    session = sandbox.process.get_session("env")
    assert session.commands[0].id == server.cmd_id
    assert len(session.commands) == 4
    assert [s.session_id for s in sandbox.process.list_sessions()] == ["env"]
    with pytest.raises(DaytonaConflictError):
        sandbox.process.create_session("env")

    sandbox.process.delete_session("env")
    assert sandbox.process.exec(probe, timeout=10).exit_code != 0, "deleting the session ends its server"
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session("env")


def test_code_run_and_exec_with_a_timeout(daytona: Daytona) -> None:
    sandbox = _new(daytona)
    ran = sandbox.process.code_run("print(40 + 2)")
    assert (ran.exit_code, ran.result) == (0, "42\n")
    failed = sandbox.process.code_run("import sys; print('bye'); sys.exit(3)")
    assert (failed.exit_code, failed.result) == (3, "bye\n")

    here = sandbox.process.exec("pwd; echo $X; ls missing", cwd="/tmp", env={"X": "1"})
    assert here.exit_code == 2 and here.result.startswith("/tmp\n1\n") and "missing" in here.result

    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError):
        sandbox.process.exec("sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    assert sandbox.process.exec("echo alive").result == "alive\n"
    assert sandbox.get_work_dir() == "/workspace" and sandbox.get_user_home_dir().startswith("/")


def test_files(daytona: Daytona) -> None:
    fs = _new(daytona).fs
    fs.upload_files(
        [FileUpload(source=b"one", destination="/workspace/d/a.txt"), FileUpload(b"two", "/workspace/d/b.txt")]
    )
    assert sorted(f.name for f in fs.list_files("/workspace/d")) == ["a.txt", "b.txt"]
    info = fs.get_file_info("/workspace/d/a.txt")
    assert (info.name, info.size, info.is_dir) == ("a.txt", 3, False)
    assert fs.get_file_info("/workspace/d").is_dir

    fs.create_folder("/workspace/d/sub", "700")
    assert fs.get_file_info("/workspace/d/sub").permissions == "0700"
    fs.move_files("/workspace/d/a.txt", "/workspace/d/sub/a2.txt")
    fs.set_file_permissions("/workspace/d/sub/a2.txt", mode="600")
    assert fs.get_file_info("/workspace/d/sub/a2.txt").permissions == "0600"

    results = fs.download_files(
        [FileDownloadRequest(source="/workspace/d/sub/a2.txt"), FileDownloadRequest(source="/workspace/d/none")]
    )
    assert results[0].result == b"one" and results[0].error is None
    assert results[1].result is None and results[1].error
    with pytest.raises(DaytonaFileNotFoundError):
        fs.download_file("/workspace/d/none")
    with pytest.raises(DaytonaFileNotFoundError):
        fs.get_file_info("/workspace/d/a.txt")

    fs.delete_file("/workspace/d/b.txt")
    with pytest.raises(DaytonaError):
        fs.delete_file("/workspace/d/sub")  # not empty, not recursive
    fs.delete_file("/workspace/d/sub", recursive=True)
    assert fs.list_files("/workspace/d") == []


def test_git_clone_and_status(daytona: Daytona) -> None:
    sandbox = _new(daytona)
    made = sandbox.process.exec(
        "git init -q -b main /workspace/origin && cd /workspace/origin && echo x > f && git add f && "
        "git -c user.email=t@t -c user.name=t commit -qm one"
    )
    assert made.exit_code == 0, made.result
    sandbox.git.clone("/workspace/origin", "/workspace/clone")
    sandbox.fs.upload_file(b"new", "/workspace/clone/new.txt")
    status = sandbox.git.status("/workspace/clone")
    assert status.current_branch == "main"
    assert [(f.name, f.worktree) for f in status.file_status] == [("new.txt", "Untracked")]
    with pytest.raises(DaytonaError, match="clone failed"):
        sandbox.git.clone("/workspace/nowhere", "/workspace/clone2")


def test_create_options_list_pages_and_snapshots(daytona: Daytona) -> None:
    batch = secrets.token_hex(4)
    named = _new(daytona, name=f"box-{batch}", labels={"batch": batch}, network_block_all=True, public=True)
    assert (named.id, named.name, named.network_block_all, named.public) == (f"box-{batch}",) * 2 + (True, True)
    with pytest.raises(DaytonaConflictError):
        _new(daytona, name=f"box-{batch}")
    for _ in range(2):
        _new(daytona, labels={"batch": batch}, auto_delete_interval=30)
    paged = list(daytona.list(ListSandboxesQuery(labels={"batch": batch}, limit=2)))
    assert len(paged) == 3 and paged[0].id == named.id
    from_image = daytona.create(CreateSandboxFromImageParams(image="local", resources=Resources(cpu=1, memory=1)))
    assert (from_image.state, from_image.cpu, from_image.memory) == (SandboxState.STARTED, 1, 1)

    named.fs.upload_file(b"kept", "/workspace/state.txt")
    named.create_snapshot(f"snap-{batch}")
    assert daytona.snapshot.get(f"snap-{batch}").state == "active"
    assert f"snap-{batch}" in [s.name for s in daytona.snapshot.list().items]
    restored = _new(daytona, snapshot=f"snap-{batch}")
    assert restored.fs.download_file("/workspace/state.txt") == b"kept"
    assert restored.snapshot == f"snap-{batch}"
    with pytest.raises(DaytonaError, match="image build"):
        daytona.snapshot.create(CreateSnapshotParams(name="img", image="debian:12"))

    ephemeral = _new(daytona, ephemeral=True)
    ephemeral.stop()
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(ephemeral.id)


def test_errors_are_the_sdks_own(daytona: Daytona, daytona_service: DaytonaService) -> None:
    with pytest.raises(DaytonaAuthenticationError):
        next(iter(Daytona(daytona_service.config(key="x" * 64)).list()))
    with pytest.raises(DaytonaNotFoundError):
        daytona.get("sbx_does_not_exist")
    with pytest.raises(DaytonaNotFoundError):
        _new(daytona, snapshot="no-such-snapshot")
    with pytest.raises(DaytonaBadRequestError, match="gpu"):
        daytona.create(CreateSandboxFromImageParams(image="local", resources=Resources(gpu=1)))
    with pytest.raises(DaytonaBadRequestError, match="image"):
        daytona.create(CreateSandboxFromImageParams(image="python:3.12"))
    with pytest.raises(DaytonaBadRequestError, match="buildInfo"):
        daytona.create(CreateSandboxFromImageParams(image=Image.debian_slim("3.12").pip_install(["x"])))
    with pytest.raises(DaytonaBadRequestError, match="name"):
        _new(daytona, name="not a valid name!")
