"""The docker provider against a real Docker Engine (scripts/docker-setup.sh).

Sandboxes use ``debian:bookworm-slim`` and ``network="none"`` unless a test
needs more; no test pulls from a registry.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.errors import (
    BadRequest,
    ProviderError,
    ProviderUnavailable,
    SandboxNotFound,
    SandboxNotRunning,
    UnsupportedSpec,
)
from app.providers.base import TIMEOUT_EXIT_CODE, Resources
from app.providers.docker import DockerProvider
from app.providers.docker.spec import MANAGED_LABEL, SANDBOX_ID_LABEL, SCOPE_LABEL, TTL_LABEL
from tests.fixtures.docker import BASE_IMAGE, TEST_LABEL, DockerEngine, docker_provider_of, docker_settings

pytestmark = [pytest.mark.docker]

MISSING_REF = "sandbox-control-test-does-not-exist"
# Counts live processes whose command line starts with "sleep 3" (the tests' sleepers).
COUNT_SLEEPERS = (
    "n=0; for d in /proc/[0-9]*; do c=$(tr '\\0' ' ' <$d/cmdline 2>/dev/null); "
    'case "$c" in "sleep 3"*) n=$((n+1));; esac; done; echo $n'
)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def sh(provider: DockerProvider, ref: str, script: str, **kwargs: Any) -> str:
    result = await provider.exec(ref, ["sh", "-c", script], timeout=kwargs.pop("timeout", 30), **kwargs)
    assert result.exit_code == 0, result
    return result.stdout.decode()


@pytest.fixture
async def sandbox(docker_provider: DockerProvider, docker_spec: Callable[..., Any]) -> str:
    created = await docker_provider.create(docker_spec())
    return created.provider_object_id


# -- lifecycle -------------------------------------------------------------------


async def test_create_labels_and_delete(docker_provider: DockerProvider, docker_spec: Callable[..., Any]) -> None:
    spec = docker_spec(labels={"task": "t1"}, env={"GREETING": "hello"}, ttl_seconds=600)
    created = await docker_provider.create(spec)
    assert created.status == "running"
    assert created.labels == {TEST_LABEL: spec.labels[TEST_LABEL], "task": "t1"}
    assert created.image == BASE_IMAGE
    assert created.created_at is not None
    ref = created.provider_object_id
    assert await docker_provider.status(ref) == "running"
    assert await sh(docker_provider, ref, 'echo "$GREETING"') == "hello\n"

    await docker_provider.delete(ref)
    with pytest.raises(SandboxNotFound):
        await docker_provider.status(ref)
    with pytest.raises(SandboxNotFound):
        await docker_provider.delete(ref)


async def test_container_carries_our_namespace_labels(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], docker_engine: DockerEngine
) -> None:
    spec = docker_spec(ttl_seconds=60)
    ref = (await docker_provider.create(spec)).provider_object_id
    _, info = docker_engine.get(f"/containers/{ref}/json")
    labels = info["Config"]["Labels"]
    assert labels[MANAGED_LABEL] == "true"
    assert labels[SANDBOX_ID_LABEL] == spec.sandbox_id
    assert labels[SCOPE_LABEL].startswith("test-")
    assert labels[TTL_LABEL] == "60"
    assert info["HostConfig"]["NetworkMode"] == "none"


async def test_labels_roundtrip_verbatim_but_provider_labels_are_reserved(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any]
) -> None:
    service_labels = {"sandbox-control.id": "sbx_x", "sandbox-control.managed": "true", "k": "v"}
    created = await docker_provider.create(docker_spec(labels=service_labels))
    assert {k: v for k, v in created.labels.items() if k != TEST_LABEL} == service_labels
    (listed,) = await docker_provider.list({"sandbox-control.id": "sbx_x"})
    assert listed.labels == created.labels
    with pytest.raises(BadRequest, match="reserved"):
        await docker_provider.create(docker_spec(labels={MANAGED_LABEL: "false"}))


async def test_same_sandbox_id_twice_conflicts(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any]
) -> None:
    spec = docker_spec()
    await docker_provider.create(spec)
    with pytest.raises(Exception, match="already exists") as caught:
        await docker_provider.create(spec)
    assert getattr(caught.value, "status_code", None) == 409


async def test_stop_start_keeps_the_filesystem(docker_provider: DockerProvider, sandbox: str) -> None:
    await sh(docker_provider, sandbox, "echo kept > /root/state")
    await docker_provider.stop(sandbox)
    assert await docker_provider.status(sandbox) == "stopped"
    await docker_provider.stop(sandbox)  # idempotent
    with pytest.raises(SandboxNotRunning):
        await docker_provider.exec(sandbox, ["true"], timeout=10)
    # The archive API reads a stopped container's files.
    assert await collect(docker_provider.read_file(sandbox, "/root/state")) == b"kept\n"

    await docker_provider.start(sandbox)
    await docker_provider.start(sandbox)  # idempotent
    assert await docker_provider.status(sandbox) == "running"
    assert await sh(docker_provider, sandbox, "cat /root/state") == "kept\n"


async def test_entry_command_that_exits_is_failed(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any]
) -> None:
    created = await docker_provider.create(docker_spec(command=["sh", "-c", "exit 3"]))
    for _ in range(100):
        if await docker_provider.status(created.provider_object_id) != "running":
            break
        await asyncio.sleep(0.05)
    assert await docker_provider.status(created.provider_object_id) == "failed"


async def test_entry_command_that_cannot_start_leaves_nothing(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], docker_test_id: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        await docker_provider.create(docker_spec(command=["/no/such/binary"]))
    assert caught.value.details.get("field") == "command"
    assert await docker_provider.list({TEST_LABEL: docker_test_id}) == []


async def test_list_finds_only_managed_containers_by_label(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], docker_test_id: str
) -> None:
    a = await docker_provider.create(docker_spec(labels={"group": "a"}))
    b = await docker_provider.create(docker_spec(labels={"group": "b"}))
    # A container we did not create, with a matching label: never ours to list.
    stranger = await docker_provider._engine.call(
        "POST",
        "containers/create",
        body={"Image": BASE_IMAGE, "Cmd": ["true"], "Labels": {TEST_LABEL: docker_test_id, "group": "a"}},
    )
    other_scope = docker_provider_of(docker_settings(), scope="another-service")
    await other_scope.aopen()
    try:
        assert await other_scope.list({TEST_LABEL: docker_test_id}) == []
        ours = await docker_provider.list({TEST_LABEL: docker_test_id})
        assert {s.provider_object_id for s in ours} == {a.provider_object_id, b.provider_object_id}
        group_a = await docker_provider.list({TEST_LABEL: docker_test_id, "group": "a"})
        assert [s.provider_object_id for s in group_a] == [a.provider_object_id]
        assert group_a[0].status == "running"
        assert group_a[0].labels["group"] == "a"
        await docker_provider.stop(b.provider_object_id)
        (listed_b,) = await docker_provider.list({TEST_LABEL: docker_test_id, "group": "b"})
        assert listed_b.status == "stopped"
    finally:
        await other_scope.aclose()
        await docker_provider._engine.call("DELETE", f"containers/{stranger['Id']}", params={"force": "1"})


# -- exec ----------------------------------------------------------------------------


async def test_exec_streams_exit_code_env_cwd_stdin(docker_provider: DockerProvider, sandbox: str) -> None:
    result = await docker_provider.exec(
        sandbox,
        ["sh", "-c", 'echo "out $FOO $(pwd)"; echo err >&2; cat; exit 7'],
        timeout=30,
        cwd="/etc",
        env={"FOO": "bar baz"},
        stdin=b"from stdin\n",
    )
    assert result.exit_code == 7
    assert result.stdout == b"out bar baz /etc\nfrom stdin\n"
    assert result.stderr == b"err\n"
    assert not result.timed_out and not result.truncated
    assert result.duration_ms >= 0


async def test_exec_failures_are_results(docker_provider: DockerProvider, sandbox: str) -> None:
    missing = await docker_provider.exec(sandbox, ["no-such-command"], timeout=30)
    assert missing.exit_code == 127
    assert b"not found" in missing.stderr
    bad_cwd = await docker_provider.exec(sandbox, ["pwd"], timeout=30, cwd="/no/such/dir")
    assert bad_cwd.exit_code != 0
    assert b"/no/such/dir" in bad_cwd.stderr


async def test_exec_argv_is_not_reparsed(docker_provider: DockerProvider, sandbox: str) -> None:
    result = await docker_provider.exec(sandbox, ["printf", "%s|", "a b", "$HOME", "'q'", ";ls"], timeout=30)
    assert result.stdout == b"a b|$HOME|'q'|;ls|"


async def test_exec_large_stdin_and_output(docker_provider: DockerProvider, sandbox: str) -> None:
    payload = bytes(range(256)) * 12_000  # ~3 MB, more than any pipe buffer
    result = await docker_provider.exec(sandbox, ["cat"], timeout=60, stdin=payload, max_output_bytes=4 << 20)
    assert result.exit_code == 0
    assert result.stdout == payload


async def test_exec_output_is_capped_per_stream(docker_provider: DockerProvider, sandbox: str) -> None:
    result = await docker_provider.exec(
        sandbox,
        ["sh", "-c", "head -c 200000 /dev/zero; echo small >&2"],
        timeout=30,
        max_output_bytes=1000,
    )
    assert result.exit_code == 0
    assert result.truncated
    assert result.stdout == b"\0" * 1000
    assert result.stderr == b"small\n"


async def test_exec_timeout_kills_the_whole_group(docker_provider: DockerProvider, sandbox: str) -> None:
    result = await docker_provider.exec(
        sandbox,
        # Two children in the group, and one that left it with setsid.
        ["sh", "-c", "sleep 301 & sleep 302 & setsid sleep 303 & echo started; wait"],
        timeout=1.5,
    )
    assert result.timed_out
    assert result.exit_code == TIMEOUT_EXIT_CODE
    assert result.stdout == b"started\n"
    assert await sh(docker_provider, sandbox, COUNT_SLEEPERS) == "0\n"
    # The sandbox is fine afterwards.
    assert (await docker_provider.exec(sandbox, ["true"], timeout=10)).exit_code == 0


async def test_exec_that_finishes_in_time_is_not_timed_out(docker_provider: DockerProvider, sandbox: str) -> None:
    result = await docker_provider.exec(sandbox, ["sh", "-c", "sleep 0.2; echo done"], timeout=20)
    assert not result.timed_out
    assert result.exit_code == 0
    assert result.stdout == b"done\n"


async def test_cancelled_exec_does_not_leave_the_command_running(docker_provider: DockerProvider, sandbox: str) -> None:
    task = asyncio.create_task(docker_provider.exec(sandbox, ["sh", "-c", "sleep 310; echo x"], timeout=60))
    for _ in range(100):
        if await sh(docker_provider, sandbox, COUNT_SLEEPERS) == "1\n":
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await sh(docker_provider, sandbox, COUNT_SLEEPERS) == "0\n"


async def test_exec_refuses_bad_input(docker_provider: DockerProvider, sandbox: str) -> None:
    with pytest.raises(BadRequest):
        await docker_provider.exec(sandbox, [], timeout=10)
    with pytest.raises(BadRequest):
        await docker_provider.exec(sandbox, ["true"], timeout=10, env={"A=B": "c"})


async def test_concurrent_execs_in_one_sandbox(docker_provider: DockerProvider, sandbox: str) -> None:
    results = await asyncio.gather(
        *(docker_provider.exec(sandbox, ["sh", "-c", f"echo {i}"], timeout=30) for i in range(8))
    )
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]


# -- files and tars ------------------------------------------------------------------


async def test_write_and_read_file_streamed(docker_provider: DockerProvider, sandbox: str) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    parts = [block, block, b"tail"]  # crosses the in-memory spool limit
    await docker_provider.write_file(sandbox, "/data/deep/dir/blob.bin", chunks(*parts))
    assert await collect(docker_provider.read_file(sandbox, "/data/deep/dir/blob.bin")) == b"".join(parts)
    assert await sh(docker_provider, sandbox, "stat -c %s /data/deep/dir/blob.bin") == f"{2 * len(block) + 4}\n"

    await docker_provider.write_file(sandbox, "/data/empty", chunks())
    assert await collect(docker_provider.read_file(sandbox, "/data/empty")) == b""


async def test_write_file_keeps_mode_and_follows_symlinks(docker_provider: DockerProvider, sandbox: str) -> None:
    await sh(docker_provider, sandbox, "printf old > /root/run.sh && chmod 750 /root/run.sh && ln -s run.sh /root/link")
    await docker_provider.write_file(sandbox, "/root/link", chunks(b"#!/bin/sh\necho new\n"))
    assert await sh(docker_provider, sandbox, "stat -c %a /root/run.sh; readlink /root/link") == "750\nrun.sh\n"
    assert await sh(docker_provider, sandbox, "/root/run.sh") == "new\n"
    assert await collect(docker_provider.read_file(sandbox, "/root/link")) == b"#!/bin/sh\necho new\n"


async def test_file_errors(docker_provider: DockerProvider, sandbox: str) -> None:
    with pytest.raises(FileNotFoundError):
        await collect(docker_provider.read_file(sandbox, "/no/such/file"))
    with pytest.raises(IsADirectoryError):
        await collect(docker_provider.read_file(sandbox, "/etc"))
    with pytest.raises(IsADirectoryError):
        await docker_provider.write_file(sandbox, "/etc", chunks(b"x"))
    with pytest.raises(BadRequest):
        await collect(docker_provider.read_file(sandbox, "relative/path"))
    with pytest.raises(NotADirectoryError):
        await docker_provider.write_file(sandbox, "/etc/hostname/child", chunks(b"x"))
    with pytest.raises(NotADirectoryError):
        await collect(docker_provider.export_tar(sandbox, "/etc/hostname"))
    with pytest.raises(FileNotFoundError):
        await collect(docker_provider.export_tar(sandbox, "/no/such/dir"))


def _names(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        return {member.name: member for member in archive.getmembers()}


async def test_export_tar_entries_are_relative(docker_provider: DockerProvider, sandbox: str) -> None:
    long_name = "n" * 150  # needs a PAX header
    await sh(
        docker_provider,
        sandbox,
        f"mkdir -p /ws/sub && echo a > /ws/a.txt && echo b > /ws/sub/b.txt && echo l > /ws/sub/{long_name} "
        "&& ln -s a.txt /ws/link && ln /ws/a.txt /ws/hard && chmod 700 /ws/sub",
    )
    members = _names(await collect(docker_provider.export_tar(sandbox, "/ws")))
    assert set(members) == {"a.txt", "sub", "sub/b.txt", f"sub/{long_name}", "link", "hard"}
    assert members["sub"].isdir() and members["sub"].mode & 0o777 == 0o700
    assert members["link"].issym() and members["link"].linkname == "a.txt"
    assert {members["hard"].islnk(), members["a.txt"].islnk()} == {True, False}
    with tarfile.open(fileobj=io.BytesIO(await collect(docker_provider.export_tar(sandbox, "/ws/")))) as archive:
        extracted = archive.extractfile("sub/b.txt")
        assert extracted is not None and extracted.read() == b"b\n"


async def test_tar_roundtrip_between_sandboxes(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], sandbox: str
) -> None:
    await sh(docker_provider, sandbox, "mkdir -p /ws/x && echo one > /ws/x/1 && head -c 300000 /dev/urandom > /ws/r")
    digest = await sh(docker_provider, sandbox, "cd /ws && sha256sum x/1 r")
    other = (await docker_provider.create(docker_spec())).provider_object_id
    await docker_provider.import_tar(other, "/restored/ws", docker_provider.export_tar(sandbox, "/ws"))
    assert await sh(docker_provider, other, "cd /restored/ws && sha256sum x/1 r") == digest


async def test_import_tar_into_existing_dir_and_plain_tar(docker_provider: DockerProvider, sandbox: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("made/by/python.txt")
        info.size = 3
        info.uid = 4242  # foreign owner: files belong to the container's user
        archive.addfile(info, io.BytesIO(b"py\n"))
    data = buffer.getvalue()
    await sh(docker_provider, sandbox, "mkdir -p /existing && echo keep > /existing/old")
    await docker_provider.import_tar(sandbox, "/existing", chunks(data[:700], data[700:]))
    assert await sh(docker_provider, sandbox, "cat /existing/old /existing/made/by/python.txt") == "keep\npy\n"
    assert await sh(docker_provider, sandbox, "stat -c %u /existing/made/by/python.txt") == "0\n"


async def test_import_tar_source_error_surfaces_as_itself(docker_provider: DockerProvider, sandbox: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("big.bin")
        info.size = 100_000
        archive.addfile(info, io.BytesIO(b"x" * info.size))
    whole = buffer.getvalue()

    async def failing_midway() -> AsyncIterator[bytes]:
        yield whole[:4096]
        raise ValueError("snapshot blob failed verification")

    async def failing_at_the_end() -> AsyncIterator[bytes]:
        yield whole  # a complete archive, then the source's own end-of-stream check fails
        raise ValueError("snapshot blob failed verification")

    for source in (failing_midway(), failing_at_the_end()):
        with pytest.raises(ValueError, match="verification"):
            await docker_provider.import_tar(sandbox, "/restore", source)
    with pytest.raises(ValueError, match="tar"):
        await docker_provider.import_tar(sandbox, "/restore", chunks(b"not a tar archive" * 40))


# -- errors, policies, resources --------------------------------------------------


async def test_unknown_sandbox_is_not_found(docker_provider: DockerProvider) -> None:
    for call in (
        docker_provider.status(MISSING_REF),
        docker_provider.start(MISSING_REF),
        docker_provider.stop(MISSING_REF),
        docker_provider.delete(MISSING_REF),
        docker_provider.exec(MISSING_REF, ["true"], timeout=5),
        collect(docker_provider.read_file(MISSING_REF, "/etc/hostname")),
        docker_provider.write_file(MISSING_REF, "/tmp/x", chunks(b"x")),
        collect(docker_provider.export_tar(MISSING_REF, "/etc")),
    ):
        with pytest.raises(SandboxNotFound):
            await call


async def test_unreachable_engine_is_unavailable(docker_engine: DockerEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    provider = docker_provider_of(docker_settings())
    await provider.aopen()  # tolerated: the service may start before its engine
    try:
        with pytest.raises(ProviderUnavailable):
            await provider.ping()
        with pytest.raises(ProviderUnavailable):
            await provider.status("anything")
        with pytest.raises(ProviderUnavailable):
            await provider.list()
    finally:
        await provider.aclose()


async def test_ping_and_capabilities(docker_provider: DockerProvider) -> None:
    await docker_provider.ping()
    caps = docker_provider.capabilities
    assert caps.stop_start is True
    assert caps.networks is None


async def test_image_is_required(docker_engine: DockerEngine, docker_spec: Callable[..., Any]) -> None:
    provider = docker_provider_of(docker_settings(SANDBOX_BASE_IMAGE=None))
    await provider.aopen()
    try:
        with pytest.raises(BadRequest, match="SANDBOX_BASE_IMAGE"):
            await provider.create(docker_spec())
    finally:
        await provider.aclose()


async def test_missing_image_with_pull_never_names_the_setting(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], docker_test_id: str
) -> None:
    with pytest.raises(UnsupportedSpec, match="SANDBOX_DOCKER_PULL=missing") as caught:
        await docker_provider.create(docker_spec(image=f"sandbox-control-test/absent:{docker_test_id}"))
    assert caught.value.field == "image"


async def test_pull_policy_missing_tries_the_registry_only_when_absent(
    docker_engine: DockerEngine, docker_spec: Callable[..., Any], docker_test_id: str
) -> None:
    provider = docker_provider_of(docker_settings({"pull": "missing"}))
    await provider.aopen()
    try:
        # Present locally: no pull, the create just works.
        present = await provider.create(docker_spec())
        await provider.delete(present.provider_object_id)
        # Absent: a pull is attempted, from a registry address that refuses at once.
        with pytest.raises(ProviderError, match="pulling image"):
            await provider.create(docker_spec(image=f"127.0.0.1:9/sandbox-control-test/absent:{docker_test_id}"))
    finally:
        await provider.aclose()


async def test_networks(docker_provider: DockerProvider, docker_spec: Callable[..., Any]) -> None:
    with pytest.raises(BadRequest, match="does not exist") as caught:
        await docker_provider.create(docker_spec(network="sandbox-control-test-no-such-net"))
    assert caught.value.details.get("field") == "network"
    host = await docker_provider.create(docker_spec(network="host"))
    # Host networking sees the host's interfaces, "none" only loopback.
    host_ifaces = await sh(docker_provider, host.provider_object_id, "ls /sys/class/net")
    none = await docker_provider.create(docker_spec(network="none"))
    assert await sh(docker_provider, none.provider_object_id, "ls /sys/class/net") == "lo\n"
    assert host_ifaces != "lo\n"


async def test_cpu_memory_pids_are_applied(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], docker_engine: DockerEngine
) -> None:
    resources = Resources(cpu=0.5, memory_mb=256, pids=64)
    created = await docker_provider.create(docker_spec(resources=resources))
    assert created.resources == resources
    _, info = docker_engine.get(f"/containers/{created.provider_object_id}/json")
    host_config = info["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 256 << 20
    assert host_config["PidsLimit"] == 64
    limit = await sh(
        docker_provider,
        created.provider_object_id,
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    assert int(limit) == 256 << 20
    (listed,) = await docker_provider.list({TEST_LABEL: created.labels[TEST_LABEL]})
    assert listed.resources == resources


async def test_disk_and_gpu_are_refused_when_the_engine_cannot(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], docker_engine: DockerEngine
) -> None:
    _, info = docker_engine.get("/info")
    backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
    if info.get("Driver") == "overlay2" and backing != "xfs":
        with pytest.raises(UnsupportedSpec) as caught:
            await docker_provider.create(docker_spec(resources=Resources(disk_mb=1024)))
        assert caught.value.field == "resources.disk_mb"
    if "nvidia" not in (info.get("Runtimes") or {}):
        assert docker_provider.capabilities.gpu is False
        with pytest.raises(UnsupportedSpec) as caught:
            await docker_provider.create(docker_spec(resources=Resources(gpu="any")))
        assert caught.value.field == "resources.gpu"


# -- the sandbox image ------------------------------------------------------------


async def test_sandbox_image_runs_as_sandbox_user_with_its_tools(
    docker_provider: DockerProvider, docker_spec: Callable[..., Any], sandbox_image: str
) -> None:
    created = await docker_provider.create(docker_spec(image=sandbox_image))
    ref = created.provider_object_id
    out = await sh(
        docker_provider,
        ref,
        "id -u; pwd; stat -c %U /workspace; git --version >/dev/null && node --version >/dev/null "
        "&& npm --version >/dev/null && opencode --version >/dev/null && "
        "python -c \"import httpx, websockets, sandbox_runtime; print('py ok')\"",
        timeout=60,
    )
    assert out == "1000\n/workspace\nsandbox\npy ok\n"
    # Files written through the archive API belong to the sandbox user.
    await docker_provider.write_file(ref, "/workspace/new/dir/file.txt", chunks(b"mine\n"))
    assert await sh(docker_provider, ref, "stat -c %U:%G /workspace/new/dir/file.txt /workspace/new") == (
        "sandbox:sandbox\nsandbox:sandbox\n"
    )
    await sh(docker_provider, ref, "echo more >> /workspace/new/dir/file.txt")
    # A non-root container user: the deadline still kills the whole group.
    result = await docker_provider.exec(ref, ["sh", "-c", "sleep 321 & setsid sleep 322 & sleep 323"], timeout=1)
    assert result.timed_out and result.exit_code == TIMEOUT_EXIT_CODE
    assert await sh(docker_provider, ref, COUNT_SLEEPERS) == "0\n"
