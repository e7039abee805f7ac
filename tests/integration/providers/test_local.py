"""What the local (bubblewrap) provider promises beyond the shared contract: isolation.

Real bwrap sandboxes on this host; skipped without bwrap (failing under
``SANDBOX_TEST_STRICT=1``). Checks that need the root setup (one host uid per
sandbox) skip when the tests run unprivileged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import ProviderUnavailable, UnsupportedSpec
from app.providers.base import ExecResult, Provider, Resources, SandboxSpec
from app.providers.local import procs
from tests.fixtures.providers import local_provider_of, local_settings

ROOT = Path(__file__).resolve().parents[3]
PRIVILEGED = os.geteuid() == 0
needs_root = pytest.mark.skipif(not PRIVILEGED, reason="per-sandbox host uids need a root service")


async def create(provider: Provider, **fields: object) -> str:
    spec = SandboxSpec(sandbox_id=f"sbx_{secrets.token_hex(4)}", **fields)  # type: ignore[arg-type]
    return (await provider.create(spec)).provider_object_id


async def sh(provider: Provider, ref: str, script: str, **kwargs: object) -> ExecResult:
    return await provider.exec(ref, ["sh", "-c", script], timeout=30, **kwargs)  # type: ignore[arg-type]


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sandbox_dir(workdir: Path, ref: str) -> Path:
    return workdir / "data" / "local" / "sandboxes" / ref


def meta_of(workdir: Path, ref: str) -> dict[str, object]:
    return dict(json.loads((sandbox_dir(workdir, ref) / "meta.json").read_text()))


async def test_sandbox_cannot_reach_the_service_data_dir(local_provider: Provider, provider_workdir: Path) -> None:
    secret = provider_workdir / "data" / "api-secret"
    secret.write_text("top secret\n")
    secret.chmod(0o600)
    ref = await create(local_provider)
    result = await sh(local_provider, ref, f"cat {secret}; ls {provider_workdir}; ls /")
    assert b"top secret" not in result.stdout
    top = set(result.stdout.decode().split())
    assert top <= {
        "bin",
        "dev",
        "etc",
        "home",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "opt",
        "proc",
        "run",
        "sbin",
        "tmp",
        "usr",
        "var",
        "workspace",
    }
    assert not top & {"root", "work", "srv", "mnt"}
    # /run holds only the read-only runtime bundle, none of the host's sockets.
    run = await sh(local_provider, ref, "ls -A /run; ls /run/sandbox-runtime")
    assert run.stdout.decode().split() == ["sandbox-runtime", "node_modules", "python", "site-packages"] or (
        run.stdout.decode().split() == ["sandbox-runtime", "python", "site-packages"]
    )


async def test_sandbox_cannot_read_another_sandbox(local_provider: Provider, provider_workdir: Path) -> None:
    owner = await create(local_provider)
    other = await create(local_provider)
    await local_provider.write_file(owner, "/workspace/mine.txt", chunks(b"owner only"))
    host_path = sandbox_dir(provider_workdir, owner) / "workspace" / "mine.txt"
    result = await sh(
        local_provider, other, f"cat {host_path}; cat /proc/*/root/workspace/mine.txt; cat /workspace/mine.txt"
    )
    assert b"owner only" not in result.stdout
    if PRIVILEGED:
        uids = {meta_of(provider_workdir, ref)["uid"] for ref in (owner, other)}
        assert len(uids) == 2 and 0 not in uids
        workspace = os.stat(sandbox_dir(provider_workdir, owner) / "workspace")
        assert (workspace.st_uid, workspace.st_mode & 0o077) == (meta_of(provider_workdir, owner)["uid"], 0)


async def test_sandbox_cannot_see_host_processes(local_provider: Provider) -> None:
    host_sleep = subprocess.Popen(["sleep", "300"])
    try:
        ref = await create(local_provider)
        result = await sh(
            local_provider,
            ref,
            f"ls /proc | grep -c '^[0-9]'; test -e /proc/{host_sleep.pid} && echo seen"
            f"; kill -0 {host_sleep.pid} 2>/dev/null && echo signalled",
        )
        lines = result.stdout.decode().split()
        assert int(lines[0]) < 10, "only the exec's own few processes are visible"
        assert "seen" not in lines and "signalled" not in lines
        assert host_sleep.poll() is None
    finally:
        host_sleep.kill()
        host_sleep.wait()


async def test_system_directories_are_read_only(local_provider: Provider) -> None:
    ref = await create(local_provider)
    for target in ("/usr/sandbox-probe", "/etc/sandbox-probe", "/sandbox-probe", "/opt/sandbox-probe"):
        assert (await sh(local_provider, ref, f"touch {target}")).exit_code != 0, target
    for writable in ("/workspace/ok", "/home/sandbox/ok", "/tmp/ok", "/var/tmp/ok"):
        assert (await sh(local_provider, ref, f"touch {writable}")).exit_code == 0, writable
    with pytest.raises(OSError):
        await local_provider.write_file(ref, "/usr/bin/evil", chunks(b"x"))


async def test_sandbox_user_has_no_privileges(local_provider: Provider, provider_workdir: Path) -> None:
    ref = await create(local_provider)
    result = await sh(
        local_provider,
        ref,
        "id -u; whoami; hostname; echo $HOME; grep CapEff /proc/self/status; "
        "cat /etc/shadow >/dev/null 2>&1 || echo no-shadow",
    )
    uid, user, hostname, home, _, caps, shadow = result.stdout.decode().split()
    assert (uid, user, hostname, home, caps, shadow) == (
        "1000",
        "sandbox",
        ref,
        "/home/sandbox",
        "0000000000000000",
        "no-shadow",
    )
    if PRIVILEGED:
        host_uid = meta_of(provider_workdir, ref)["uid"]
        assert isinstance(host_uid, int) and host_uid > 0
        assert procs.pids_of_uid(host_uid), "the sandbox's processes run as its own host uid"


async def test_secrets_stay_out_of_the_sandbox_and_host_command_lines(
    local_provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_SERVICE_SECRET", "svc-secret-4711")
    ref = await create(local_provider, env={"SESSION_TOKEN": "tok-secret-0815"})
    result = await local_provider.exec(ref, ["env"], timeout=30)
    assert b"SESSION_TOKEN=tok-secret-0815" in result.stdout
    assert b"svc-secret-4711" not in result.stdout
    # Environment values travel through a memfd, never a world-readable command line.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                assert b"tok-secret-0815" not in (entry / "cmdline").read_bytes()
            except OSError:
                continue


async def test_sandbox_survives_a_provider_restart(provider_workdir: Path) -> None:
    settings = local_settings(provider_workdir / "data")
    first = local_provider_of(settings)
    await first.aopen()
    label = secrets.token_hex(4)
    ref = await create(first, labels={"restart": label}, command=["sleep", "600"])
    await first.aclose()
    second = local_provider_of(settings)
    await second.aopen()
    try:
        found = await second.list({"restart": label})
        assert [(s.provider_object_id, s.status) for s in found] == [(ref, "running")]
        assert (await sh(second, ref, "echo alive")).stdout == b"alive\n"
    finally:
        await second.delete(ref)
        await second.aclose()


async def test_init_outlives_the_process_that_created_it(local_provider: Provider, provider_workdir: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio
        from app.providers.base import SandboxSpec
        from tests.fixtures.providers import local_provider_of, local_settings

        async def main():
            provider = local_provider_of(local_settings({str(provider_workdir / "data")!r}))
            created = await provider.create(SandboxSpec(sandbox_id="outlive", command=["sleep", "600"]))
            print(created.provider_object_id)

        asyncio.run(main())
    """)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    ref = done.stdout.decode().strip()
    assert await local_provider.status(ref) == "running"
    assert (await sh(local_provider, ref, "echo still here")).stdout == b"still here\n"


async def test_background_processes_end_with_their_exec(local_provider: Provider) -> None:
    ref = await create(local_provider)
    started = await sh(
        local_provider, ref, "(while :; do echo x >> ticks; sleep 0.05; done) >/dev/null 2>&1 & sleep 0.3"
    )
    assert started.exit_code == 0
    first = (await sh(local_provider, ref, "cat ticks")).stdout
    assert first
    await asyncio.sleep(0.6)
    assert (await sh(local_provider, ref, "cat ticks")).stdout == first


async def test_memory_limit_is_enforced(local_provider: Provider) -> None:
    created = await local_provider.create(SandboxSpec(sandbox_id="mem", resources=Resources(memory_mb=64)))
    if created.resources.memory_mb is None:
        pytest.skip("no memory limit mechanism on this host")
    ref = created.provider_object_id
    small = await local_provider.exec(ref, ["python3", "-c", "x = b'x' * (8 << 20)"], timeout=60)
    assert small.exit_code == 0, small.stderr
    big = await local_provider.exec(ref, ["python3", "-c", "x = b'x' * (256 << 20)"], timeout=60)
    assert big.exit_code != 0


async def test_pids_limit_is_enforced(local_provider: Provider) -> None:
    created = await local_provider.create(SandboxSpec(sandbox_id="pids", resources=Resources(pids=16)))
    if created.resources.pids is None:
        pytest.skip("no pids limit mechanism on this host")
    result = await sh(local_provider, created.provider_object_id, "for i in $(seq 1 40); do sleep 1 & done; wait")
    assert result.exit_code != 0


@needs_root
async def test_stop_leaves_no_process_and_no_cgroup(local_provider: Provider, provider_workdir: Path) -> None:
    ref = await create(local_provider, resources=Resources(memory_mb=256, pids=64), command=["sleep", "600"])
    uid = meta_of(provider_workdir, ref)["uid"]
    assert isinstance(uid, int)
    record = json.loads((sandbox_dir(provider_workdir, ref) / "init.json").read_text())
    assert procs.pids_of_uid(uid)
    await local_provider.stop(ref)
    assert procs.pids_of_uid(uid) == []
    assert not any(Path(group).exists() for group in record["cgroups"])
    assert (sandbox_dir(provider_workdir, ref) / "workspace").is_dir()


async def test_writes_through_symlinks_stay_inside(local_provider: Provider, provider_workdir: Path) -> None:
    ref = await create(local_provider)
    meta_path = sandbox_dir(provider_workdir, ref) / "meta.json"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (Path("/etc/passwd"), meta_path)}
    await sh(local_provider, ref, f"ln -s /etc/passwd /workspace/to-passwd; ln -s {meta_path} /workspace/to-meta")
    for link in ("/workspace/to-passwd", "/workspace/to-meta"):
        with pytest.raises(OSError):
            await local_provider.write_file(ref, link, chunks(b"owned\n"))
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}


@needs_root
async def test_host_uids_are_distinct_and_reused(local_provider: Provider, provider_workdir: Path) -> None:
    first, second = await create(local_provider), await create(local_provider)
    uid_first, uid_second = (meta_of(provider_workdir, r)["uid"] for r in (first, second))
    assert uid_first != uid_second
    await local_provider.delete(first)
    third = await create(local_provider)
    assert meta_of(provider_workdir, third)["uid"] == min(uid_first, uid_second)  # type: ignore[type-var]


async def test_unsupported_fields_are_refused(local_provider: Provider) -> None:
    for fields, name in (
        ({"image": "ubuntu:22.04"}, "image"),
        ({"network": "bridge"}, "network"),
        ({"resources": Resources(disk_mb=1024)}, "resources.disk_mb"),
        ({"resources": Resources(gpu="any")}, "resources.gpu"),
    ):
        with pytest.raises(UnsupportedSpec) as caught:
            await create(local_provider, **fields)
        assert caught.value.field == name
    assert await local_provider.list() == []


async def test_missing_bwrap_is_unavailable(provider_workdir: Path) -> None:
    provider = local_provider_of(local_settings(provider_workdir / "data", bwrap="/nonexistent/bwrap"))
    with pytest.raises(ProviderUnavailable, match="bubblewrap"):
        await provider.aopen()


@needs_root
async def test_unsearchable_data_dir_is_reported(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    provider = local_provider_of(local_settings(private / "data"))
    with pytest.raises(ProviderUnavailable, match="chmod o\\+x"):
        await provider.aopen()
