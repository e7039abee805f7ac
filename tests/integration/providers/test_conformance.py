"""The provider contract, checked against every provider in ``PROVIDER_FACTORIES``.

Commands only touch paths relative to their cwd (or the file API's absolute
sandbox paths), so the same checks run on the host-process fake and on real
isolation. Checks that depend on an optional feature read
``provider.capabilities``; a provider that cannot pass a check by design is
listed in ``KNOWN_DIFFERENCES`` with the reason, and that check is skipped
for it (nothing else is).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.errors import BadRequest, NotFound, PreviewUnsupported, SandboxNotFound, SandboxNotRunning, UnsupportedSpec
from app.providers.base import TIMEOUT_EXIT_CODE, ExecResult, Provider, ProviderSandbox, Resources, SandboxSpec

#: provider name -> {check name: why this provider cannot pass it}
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    "fake": {
        "test_network_none_is_isolated": "the fake runs commands as host processes; 'none' is recorded, not enforced",
    },
    "daytona": {
        "test_effective_resources_never_exceed_the_request": "Daytona allocates whole vCPUs and whole GiB (at "
        "least 1): 512 MB becomes 1 GiB, and the effective value says so",
        "test_network_host_reaches_loopback": "a Daytona sandbox runs on Daytona's machines: 'host' is its default "
        "egress network, never this machine's loopback (the local-backed stub would pass it vacuously)",
    },
    "modal": {
        # Modal has no stop/resume (capabilities.stop_start=False): stop/start answer 422 UnsupportedSpec.
        "test_stop_keeps_files_and_start_resumes": "Modal sandboxes cannot be stopped and resumed",
        "test_exec_on_stopped_sandbox_is_not_running": "Modal sandboxes cannot be stopped",
        "test_stop_and_start_are_idempotent": "Modal sandboxes cannot be stopped and resumed",
        "test_delete_a_stopped_sandbox": "Modal sandboxes cannot be stopped",
        "test_entry_command_runs_until_stop": "Modal sandboxes cannot be stopped (the entry command ends on delete)",
        "test_network_host_reaches_loopback": "a Modal sandbox runs in Modal's cloud: 'host' means open egress, "
        "never this machine's loopback",
    },
    "kubernetes": {
        "test_effective_resources_never_exceed_the_request": "Kubernetes has no per-pod process limit: 'pids' is "
        "refused (422) unless SANDBOX_K8S_POD_PIDS_LIMIT declares the kubelets' podPidsLimit, and then only at or "
        "above it, never as low as the 256 asked here (cpu and memory: test_kubernetes.py)",
        "test_network_host_reaches_loopback": "a pod runs on the cluster's pod network: 'host' is its default "
        "network, never this machine's loopback (the local-backed stub would pass it vacuously)",
    },
}

UNKNOWN_REF = "lcl-000000000000"
HEARTBEAT_ENTRY = [
    "sh",
    "-c",
    'trap "echo term >> ended; exit 0" TERM; while :; do echo beat >> heartbeat; sleep 0.05; done',
]


@pytest.fixture(autouse=True)
def _known_differences(request: pytest.FixtureRequest, provider: Provider) -> None:
    reason = KNOWN_DIFFERENCES.get(provider.name, {}).get(request.node.originalname)
    if reason:
        pytest.skip(f"known difference of {provider.name!r}: {reason}")


# -- helpers ---------------------------------------------------------------------


async def create(provider: Provider, **fields: object) -> ProviderSandbox:
    spec = SandboxSpec(sandbox_id=fields.pop("sandbox_id", f"sbx_{secrets.token_hex(4)}"), **fields)  # type: ignore[arg-type]
    return await provider.create(spec)


async def sh(provider: Provider, ref: str, script: str, **kwargs: object) -> ExecResult:
    timeout = kwargs.pop("timeout", 30.0)
    return await provider.exec(ref, ["sh", "-c", script], timeout=timeout, **kwargs)  # type: ignore[arg-type]


async def chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def file_or_none(provider: Provider, ref: str, path: str) -> bytes | None:
    try:
        return await read_all(provider.read_file(ref, path))
    except FileNotFoundError:
        return None


@pytest.fixture
async def box(provider: Provider) -> str:
    """A running sandbox with defaults; deleted by the provider fixture."""
    return (await create(provider)).provider_object_id


# -- lifecycle, status, labels ---------------------------------------------------


async def test_create_returns_running_with_labels(provider: Provider) -> None:
    created = await create(provider, labels={"team": "a", "task": "t1"})
    assert created.status == "running"
    assert created.provider_object_id
    assert dict(created.labels) == {"team": "a", "task": "t1"}
    assert await provider.status(created.provider_object_id) == "running"


async def test_list_matches_label_subsets(provider: Provider) -> None:
    suite = secrets.token_hex(4)
    a = await create(provider, labels={"suite": suite, "role": "a"})
    b = await create(provider, labels={"suite": suite, "role": "b"})
    both = {s.provider_object_id for s in await provider.list({"suite": suite})}
    assert both == {a.provider_object_id, b.provider_object_id}
    only_a = await provider.list({"suite": suite, "role": "a"})
    assert [s.provider_object_id for s in only_a] == [a.provider_object_id]
    assert only_a[0].status == "running"
    assert await provider.list({"suite": "no-such-suite"}) == []
    assert {a.provider_object_id, b.provider_object_id} <= {s.provider_object_id for s in await provider.list()}


async def test_concurrent_creates_are_distinct(provider: Provider) -> None:
    created = await asyncio.gather(*(create(provider) for _ in range(3)))
    refs = {c.provider_object_id for c in created}
    assert len(refs) == 3
    results = await asyncio.gather(*(sh(provider, ref, "echo ok") for ref in refs))
    assert all(r.stdout == b"ok\n" for r in results)


async def test_unknown_ref_is_not_found_everywhere(provider: Provider) -> None:
    for operation in (provider.status, provider.start, provider.stop, provider.delete):
        with pytest.raises(SandboxNotFound):
            await operation(UNKNOWN_REF)
    with pytest.raises(SandboxNotFound):
        await provider.exec(UNKNOWN_REF, ["true"], timeout=5)
    with pytest.raises(SandboxNotFound):
        await read_all(provider.read_file(UNKNOWN_REF, "/workspace/x"))
    with pytest.raises(SandboxNotFound):
        await provider.write_file(UNKNOWN_REF, "/workspace/x", chunks(b"x"))
    with pytest.raises(NotFound):
        await read_all(provider.export_tar(UNKNOWN_REF, "/workspace"))


async def test_stop_keeps_files_and_start_resumes(provider: Provider, box: str) -> None:
    await provider.write_file(box, "/workspace/kept.txt", chunks(b"still here"))
    await provider.stop(box)
    assert await provider.status(box) == "stopped"
    assert [s.status for s in await provider.list() if s.provider_object_id == box] == ["stopped"]
    await provider.start(box)
    assert await provider.status(box) == "running"
    assert await read_all(provider.read_file(box, "/workspace/kept.txt")) == b"still here"


async def test_exec_on_stopped_sandbox_is_not_running(provider: Provider, box: str) -> None:
    await provider.stop(box)
    with pytest.raises(SandboxNotRunning):
        await provider.exec(box, ["true"], timeout=5)


async def test_stop_and_start_are_idempotent(provider: Provider, box: str) -> None:
    await provider.stop(box)
    await provider.stop(box)
    assert await provider.status(box) == "stopped"
    await provider.start(box)
    await provider.start(box)
    assert await provider.status(box) == "running"
    assert (await sh(provider, box, "echo again")).stdout == b"again\n"


async def test_port_endpoint_is_a_url_and_only_while_running(provider: Provider, box: str) -> None:
    """Preview URLs: ``port_endpoint`` names an http(s) origin, or says the provider cannot reach ports."""
    try:
        endpoint = await provider.port_endpoint(box, 8080)
    except (PreviewUnsupported, BadRequest):
        return  # cannot reach ports, or (Modal) only ports declared at create
    scheme, rest = endpoint.url.split("://", 1)
    assert scheme in ("http", "https") and rest and "/" not in rest and "?" not in rest
    if provider.capabilities.stop_start:
        await provider.stop(box)
        with pytest.raises(SandboxNotRunning):
            await provider.port_endpoint(box, 8080)


async def test_delete_removes_the_sandbox(provider: Provider) -> None:
    label = secrets.token_hex(4)
    ref = (await create(provider, labels={"del": label})).provider_object_id
    await provider.write_file(ref, "/workspace/f", chunks(b"x"))
    await provider.delete(ref)
    with pytest.raises(SandboxNotFound):
        await provider.status(ref)
    with pytest.raises(SandboxNotFound):
        await provider.delete(ref)
    assert await provider.list({"del": label}) == []


async def test_delete_a_stopped_sandbox(provider: Provider, box: str) -> None:
    await provider.stop(box)
    await provider.delete(box)
    with pytest.raises(SandboxNotFound):
        await provider.status(box)


async def test_entry_command_runs_until_stop(provider: Provider) -> None:
    ref = (await create(provider, command=HEARTBEAT_ENTRY)).provider_object_id

    async def beating() -> bool:
        data = await file_or_none(provider, ref, "/workspace/heartbeat")
        return data is not None and data.count(b"beat") >= 3

    await wait_until(beating, what="the entry command's heartbeat")
    assert await provider.status(ref) == "running"
    await provider.stop(ref)
    assert await provider.status(ref) == "stopped"
    await provider.start(ref)
    # The first run got SIGTERM on stop and ended through its trap.
    assert await read_all(provider.read_file(ref, "/workspace/ended")) == b"term\n"


async def test_entry_command_failure_reads_as_failed(provider: Provider) -> None:
    ref = (await create(provider, command=["sh", "-c", "exit 3"])).provider_object_id

    async def failed() -> bool:
        return await provider.status(ref) == "failed"

    await wait_until(failed, what="status 'failed'")
    with pytest.raises(SandboxNotRunning):
        await provider.exec(ref, ["true"], timeout=5)


# -- exec ------------------------------------------------------------------------


async def test_exec_echo(provider: Provider, box: str) -> None:
    result = await provider.exec(box, ["echo", "hello", "world"], timeout=30)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"hello world\n", b"")
    assert not result.timed_out and not result.truncated


async def test_exec_exit_codes_are_results(provider: Provider, box: str) -> None:
    for code in (1, 3, 42):
        result = await sh(provider, box, f"exit {code}")
        assert result.exit_code == code
    assert (await provider.exec(box, ["false"], timeout=30)).exit_code == 1


async def test_missing_program_is_a_result(provider: Provider, box: str) -> None:
    result = await provider.exec(box, ["definitely-not-a-program-xyz"], timeout=30)
    assert result.exit_code != 0
    assert not result.timed_out


async def test_exec_killed_by_signal_reports_128_plus_signal(provider: Provider, box: str) -> None:
    assert (await sh(provider, box, "kill -TERM $$")).exit_code == 128 + 15


async def test_exec_stderr_is_separate(provider: Provider, box: str) -> None:
    result = await sh(provider, box, "echo out; echo err >&2; exit 2")
    assert (result.exit_code, result.stdout, result.stderr) == (2, b"out\n", b"err\n")


async def test_exec_stdin(provider: Provider, box: str) -> None:
    payload = b"line one\nline two\n" + bytes(range(256)) * 400
    result = await provider.exec(box, ["cat"], timeout=30, stdin=payload)
    assert result.stdout == payload
    assert (await provider.exec(box, ["cat"], timeout=30)).stdout == b""


async def test_exec_cwd(provider: Provider, box: str) -> None:
    await sh(provider, box, "mkdir -p sub/dir")
    result = await sh(provider, box, "echo here > marker", cwd="/workspace/sub/dir")
    assert result.exit_code == 0
    assert await read_all(provider.read_file(box, "/workspace/sub/dir/marker")) == b"here\n"


async def test_exec_default_cwd_is_workspace(provider: Provider, box: str) -> None:
    await sh(provider, box, "echo default > where")
    assert await read_all(provider.read_file(box, "/workspace/where")) == b"default\n"


async def test_exec_env_from_spec_and_per_exec(provider: Provider) -> None:
    ref = (await create(provider, env={"FROM_SPEC": "spec value", "OVERRIDE": "spec"})).provider_object_id
    result = await sh(
        provider,
        ref,
        'printf "%s|%s|%s" "$FROM_SPEC" "$OVERRIDE" "$PER_EXEC"',
        env={"OVERRIDE": "exec", "PER_EXEC": "x y"},
    )
    assert result.stdout == b"spec value|exec|x y"
    assert (await sh(provider, ref, 'printf "%s" "$PER_EXEC"')).stdout == b""


async def test_exec_does_not_see_the_service_environment(provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_CONFORMANCE_SECRET", "do-not-leak")
    ref = (await create(provider)).provider_object_id
    result = await provider.exec(ref, ["env"], timeout=30)
    assert result.exit_code == 0
    assert b"do-not-leak" not in result.stdout
    assert b"PATH=" in result.stdout


async def test_exec_timeout_kills_the_process_group(provider: Provider, box: str) -> None:
    script = "(while :; do echo x >> ticks; sleep 0.05; done) & sleep 100"
    result = await sh(provider, box, script, timeout=1.0)
    assert result.timed_out
    assert result.exit_code == TIMEOUT_EXIT_CODE
    first = await read_all(provider.read_file(box, "/workspace/ticks"))
    assert first, "the background loop should have ticked before the deadline"
    await asyncio.sleep(0.6)  # a surviving loop would tick ~12 times meanwhile
    assert await read_all(provider.read_file(box, "/workspace/ticks")) == first


async def test_exec_output_is_capped_and_flagged(provider: Provider, box: str) -> None:
    result = await sh(provider, box, "head -c 300000 /dev/zero; head -c 5000 /dev/zero >&2", max_output_bytes=1000)
    assert result.exit_code == 0
    assert result.truncated
    assert (len(result.stdout), len(result.stderr)) == (1000, 1000)
    small = await sh(provider, box, "head -c 300000 /dev/zero")
    assert len(small.stdout) == 300000 and not small.truncated


async def test_concurrent_execs(provider: Provider, box: str) -> None:
    results = await asyncio.gather(
        *(provider.exec(box, ["sh", "-c", 'echo "$0"', str(i)], timeout=30) for i in range(10))
    )
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(10)]


# -- files -------------------------------------------------------------------------


async def test_file_round_trip_binary(provider: Provider, box: str) -> None:
    data = bytes(range(256)) * 33 + b"\0\r\n\xff"
    await provider.write_file(box, "/workspace/bin.dat", chunks(data, 1000))
    assert await read_all(provider.read_file(box, "/workspace/bin.dat")) == data
    size = await provider.exec(box, ["wc", "-c", "bin.dat"], timeout=30)
    assert size.stdout.split()[0] == str(len(data)).encode()


async def test_large_file_round_trip_is_streamed(provider: Provider, box: str) -> None:
    block = os.urandom(1 << 20)
    blocks = [bytes([i]) + block[1:] for i in range(20)]
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()

    async def source() -> AsyncIterator[bytes]:
        for b in blocks:
            for start in range(0, len(b), 64 * 1024):
                yield b[start : start + 64 * 1024]

    await provider.write_file(box, "/workspace/big.bin", source())
    digest, total, largest = hashlib.sha256(), 0, 0
    async for chunk in provider.read_file(box, "/workspace/big.bin"):
        digest.update(chunk)
        total += len(chunk)
        largest = max(largest, len(chunk))
    assert (total, digest.hexdigest()) == (20 << 20, expected)
    assert largest <= 4 << 20, "read_file should stream in chunks, not hand over the whole file"


async def test_write_creates_parent_directories(provider: Provider, box: str) -> None:
    await provider.write_file(box, "/workspace/a/b/c/deep.txt", chunks(b"deep"))
    assert await read_all(provider.read_file(box, "/workspace/a/b/c/deep.txt")) == b"deep"


async def test_write_replaces_existing_content(provider: Provider, box: str) -> None:
    await provider.write_file(box, "/workspace/f.txt", chunks(b"a much longer first version"))
    await provider.write_file(box, "/workspace/f.txt", chunks(b"short"))
    assert await read_all(provider.read_file(box, "/workspace/f.txt")) == b"short"


async def test_write_empty_file(provider: Provider, box: str) -> None:
    await provider.write_file(box, "/workspace/empty", chunks(b""))
    assert await read_all(provider.read_file(box, "/workspace/empty")) == b""


async def test_files_and_exec_see_the_same_filesystem(provider: Provider, box: str) -> None:
    await provider.write_file(box, "/workspace/from-api.txt", chunks(b"api"))
    assert (await provider.exec(box, ["cat", "from-api.txt"], timeout=30)).stdout == b"api"
    await sh(provider, box, "printf exec > from-exec.txt")
    assert await read_all(provider.read_file(box, "/workspace/from-exec.txt")) == b"exec"
    await provider.write_file(box, "/home/sandbox/in-home", chunks(b"home"))
    assert await read_all(provider.read_file(box, "/home/sandbox/in-home")) == b"home"


async def test_read_missing_file_is_file_not_found(provider: Provider, box: str) -> None:
    with pytest.raises(FileNotFoundError):
        await read_all(provider.read_file(box, "/workspace/no/such/file"))


async def test_read_directory_is_a_directory_error(provider: Provider, box: str) -> None:
    await sh(provider, box, "mkdir -p adir")
    with pytest.raises(IsADirectoryError):
        await read_all(provider.read_file(box, "/workspace/adir"))


async def test_read_stopped_early_leaves_the_sandbox_usable(provider: Provider, box: str) -> None:
    await provider.write_file(box, "/workspace/big", chunks(b"z" * (4 << 20)))
    stream = provider.read_file(box, "/workspace/big")
    first = await anext(stream)
    assert first
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await sh(provider, box, "echo fine")).stdout == b"fine\n"


async def test_tar_round_trip_into_a_second_sandbox(provider: Provider) -> None:
    source = (await create(provider)).provider_object_id
    target = (await create(provider)).provider_object_id
    build = await sh(
        provider,
        source,
        """
        set -e
        mkdir -p src/sub/deeper src/empty
        printf hello > src/sub/file.txt
        printf '#!/bin/sh\\necho ran\\n' > src/run.sh
        chmod 755 src/run.sh
        chmod 640 src/sub/file.txt
        ln -s sub/file.txt src/link
        ln src/sub/file.txt src/hard
        touch -d @1000000000 src/sub/file.txt
    """,
    )
    assert build.exit_code == 0, build.stderr
    archive = await read_all(provider.export_tar(source, "/workspace/src"))
    assert archive
    await provider.import_tar(target, "/workspace/restored", chunks(archive))
    check = await sh(
        provider,
        target,
        """
        cd restored
        stat -c '%n %a %Y %F' sub/file.txt
        stat -c '%n %a' run.sh
        readlink link
        cat link; echo
        ./run.sh
        test -d empty && test -d sub/deeper && echo dirs
        stat -c %h sub/file.txt
    """,
    )
    assert check.exit_code == 0, check.stderr
    assert check.stdout.decode().splitlines() == [
        "sub/file.txt 640 1000000000 regular file",
        "run.sh 755",
        "sub/file.txt",
        "hello",
        "ran",
        "dirs",
        "2",
    ]


async def test_export_missing_directory_is_file_not_found(provider: Provider, box: str) -> None:
    with pytest.raises(FileNotFoundError):
        await read_all(provider.export_tar(box, "/workspace/not-there"))


# -- capabilities -------------------------------------------------------------------


async def test_unsupported_gpu_is_refused(provider: Provider) -> None:
    if provider.capabilities.gpu:
        pytest.skip("provider has GPUs")
    with pytest.raises(UnsupportedSpec) as caught:
        await create(provider, resources=Resources(gpu="any"))
    assert caught.value.field == "resources.gpu"


async def test_unknown_network_is_refused(provider: Provider) -> None:
    if provider.capabilities.networks is None:
        pytest.skip("provider accepts any network name")
    with pytest.raises(UnsupportedSpec) as caught:
        await create(provider, network="no-such-network-xyz")
    assert caught.value.field == "network"


async def test_effective_resources_never_exceed_the_request(provider: Provider) -> None:
    created = await create(provider, resources=Resources(cpu=1, memory_mb=512, pids=256))
    effective = created.resources
    for name, asked in (("cpu", 1), ("memory_mb", 512), ("pids", 256)):
        value = getattr(effective, name)
        assert value is None or value <= asked, name
    assert (await sh(provider, created.provider_object_id, "echo limited")).stdout == b"limited\n"


async def _loopback_listener() -> tuple[asyncio.Server, int, list[bool]]:
    accepted: list[bool] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(True)
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


CONNECT = "exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"


async def test_network_host_reaches_loopback(provider: Provider) -> None:
    if "host" not in (provider.capabilities.networks or {"host"}):
        pytest.skip("provider has no host network")
    server, port, _ = await _loopback_listener()
    async with server:
        ref = (await create(provider, network="host")).provider_object_id
        result = await provider.exec(ref, ["bash", "-c", CONNECT.format(port=port)], timeout=30)
    assert result.stdout == b"connected\n", result.stderr


async def test_network_none_is_isolated(provider: Provider) -> None:
    if "none" not in (provider.capabilities.networks or {"none"}):
        pytest.skip("provider has no 'none' network")
    server, port, accepted = await _loopback_listener()
    async with server:
        ref = (await create(provider, network="none")).provider_object_id
        result = await provider.exec(ref, ["bash", "-c", CONNECT.format(port=port)], timeout=30)
    assert result.exit_code != 0
    assert accepted == []
