"""Snapshots and restores through the API, on real bubblewrap sandboxes, with the
directory blob store and a real S3 server."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from pydantic import SecretStr

from app.client import ApiError, SandboxClient
from app.settings import Settings
from app.snapshots.manifest import SnapshotManifest
from app.storage.state.snapshots import SnapshotRecord
from app.storage.state.times import utcnow
from tests.fixtures.app import serve_in_process
from tests.integration.services.s3_outage import s3_down_during
from tests.support_snapshots import stored_archive, stored_keys
from tests.support_tree import build_sample_tree, tar_extract, tar_stream, tree_hash

Service = tuple[Any, httpx.AsyncClient, SandboxClient]


@pytest.fixture(params=["directory", pytest.param("s3", marks=pytest.mark.s3)])
def store_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "directory":
        return {}
    server = request.getfixturevalue("s3_server")
    if not server.running:
        server.start()
    bucket = request.getfixturevalue("s3_bucket")
    return {
        "s3_endpoint": server.endpoint,
        "s3_bucket": bucket,
        "s3_access_key": SecretStr(server.access_key),
        "s3_secret_key": SecretStr(server.secret_key),
        "s3_region": server.region,
    }


@pytest.fixture
def local_settings(
    make_settings: Callable[..., Settings], provider_workdir: Path, store_settings: dict[str, Any]
) -> Callable[..., Settings]:
    def build(name: str = "data", **overrides: Any) -> Settings:
        return make_settings(provider="local", data_dir=provider_workdir / name, **{**store_settings, **overrides})

    return build


@pytest.fixture
async def service(local_settings: Callable[..., Settings]) -> AsyncIterator[Service]:
    async with serve_in_process(local_settings()) as triple:
        yield triple
        await _delete_all(triple[2])


async def _delete_all(client: SandboxClient) -> None:
    for sandbox in await client.list_sandboxes():
        await client.delete(sandbox["id"])


def provider_of(app: Any) -> Any:
    return app.state.services.provider


async def fill_workspace(app: Any, sandbox: dict[str, Any], root: Path) -> None:
    await provider_of(app).import_tar(sandbox["provider_object_id"], "/workspace", tar_stream(root))


async def workspace_hash(app: Any, sandbox: dict[str, Any], dest: Path) -> str:
    code, stderr = await tar_extract(provider_of(app).export_tar(sandbox["provider_object_id"], "/workspace"), dest)
    assert code == 0, stderr
    return tree_hash(dest)


async def test_fidelity_round_trip(service: Service, tmp_path: Path) -> None:
    app, _, client = service
    tree = build_sample_tree(tmp_path / "tree")
    source = await client.create(labels={"role": "source"})
    await fill_workspace(app, source, tree)
    snapshot = await client.request("POST", f"/v1/sandboxes/{source['id']}/snapshots", json={"reason": "idle"})
    assert snapshot["status"] == "ready"
    assert snapshot["file_count"] >= 10 and snapshot["size_bytes"] > 0 and len(snapshot["sha256"]) == 64

    restored = await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={"labels": {"r": "1"}})
    assert restored["status"] == "running" and restored["id"] != source["id"]
    assert await workspace_hash(app, restored, tmp_path / "out") == tree_hash(tree)
    events = await client.request("GET", f"/v1/sandboxes/{restored['id']}/events")
    assert [e["kind"] for e in events["events"]][-1] == "restored"


async def test_snapshot_records_listing_and_delete(service: Service) -> None:
    _, _, client = service
    sandbox = await client.create()
    await client.exec(sandbox["id"], ["sh", "-c", "echo a > /workspace/a.txt"])
    first = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={"session_id": "s-1"})
    second = await client.request(
        "POST", f"/v1/sandboxes/{sandbox['provider_object_id']}/snapshots", json={"session_id": "s-1"}
    )
    by_sandbox = await client.request("GET", f"/v1/sandboxes/{sandbox['id']}/snapshots")
    assert [s["id"] for s in by_sandbox["snapshots"]] == [second["id"], first["id"]]
    by_session = await client.request("GET", "/v1/snapshots", params={"session_id": "s-1"})
    assert {s["id"] for s in by_session["snapshots"]} == {first["id"], second["id"]}
    assert (await client.request("GET", f"/v1/snapshots/{first['id']}"))["sha256"] == first["sha256"]
    await client.request("DELETE", f"/v1/snapshots/{first['id']}")
    for method, path in (("GET", f"/v1/snapshots/{first['id']}"), ("POST", f"/v1/snapshots/{first['id']}/restore")):
        with pytest.raises(ApiError) as err:
            await client.request(method, path, json={} if method == "POST" else None)
        assert (err.value.status, err.value.code) == (404, "snapshot_not_found")


async def test_concurrent_snapshots_of_one_sandbox_are_serialized(service: Service) -> None:
    _, _, client = service
    sandbox = await client.create()
    await client.exec(sandbox["id"], ["sh", "-c", "head -c 3000000 /dev/urandom > /workspace/r.bin"])
    results = await asyncio.gather(
        *(client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={}) for _ in range(3))
    )
    assert len({r["id"] for r in results}) == 3
    assert all(r["status"] == "ready" for r in results)
    assert len({r["sha256"] for r in results}) == 1  # same content, same archive


async def test_snapshot_of_a_stopped_or_unknown_sandbox(service: Service) -> None:
    _, _, client = service
    sandbox = await client.create()
    await client.stop(sandbox["id"])
    with pytest.raises(ApiError) as err:
        await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
    assert (err.value.status, err.value.code) == (409, "sandbox_not_running")
    with pytest.raises(ApiError) as err:
        await client.request("POST", "/v1/sandboxes/nope/snapshots", json={})
    assert err.value.status == 404


async def test_no_secrets_in_the_archive(service: Service) -> None:
    app, _, client = service
    token, api_key = "ghs_" + "T0kenValue" * 4, "sk-live-" + "K3yValue" * 4
    sandbox = await client.create(env={"VCS_CLONE_TOKEN": token, "OPENAI_API_KEY": api_key})
    script = f"""
        set -e
        mkdir -p /workspace/repo/.git
        cd /workspace/repo
        printf '[remote "origin"]\\n\\turl = https://x-access-token:{token}@github.com/o/r.git\\n' > .git/config
        printf '[http]\\n\\textraheader = AUTHORIZATION: basic {token}\\n' >> .git/config
        echo "https://x:{token}@github.com" > /workspace/.git-credentials
        echo code > main.py
    """
    assert (await client.exec(sandbox["id"], ["sh", "-c", script]))["exit_code"] == 0
    snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
    archive = await stored_archive(app.state.services.blobs, snapshot["id"])
    assert b"main.py" in archive
    assert token.encode() not in archive and api_key.encode() not in archive
    assert b"T0kenValue" not in archive

    # A secret that cannot be scrubbed (in plain file content) refuses the snapshot.
    await client.exec(sandbox["id"], ["sh", "-c", f"echo {api_key} > /workspace/leak.txt"])
    with pytest.raises(ApiError) as err:
        await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
    assert err.value.status == 422
    assert api_key not in err.value.message
    failed = (await client.request("GET", f"/v1/sandboxes/{sandbox['id']}/snapshots"))["snapshots"]
    assert [s["status"] for s in failed] == ["failed", "ready"]


async def _corrupt_blob(app: Any, snapshot_id: str, change: Callable[[bytes], bytes]) -> None:
    blobs = app.state.services.blobs
    key = (await stored_keys(blobs, snapshot_id))[0]
    data = await blobs.get_bytes(key)

    async def chunks() -> AsyncIterator[bytes]:
        yield change(data)

    await blobs.put_stream(key, chunks())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 0xFF]) + d[len(d) // 2 + 1 :], id="flip"),
        pytest.param(lambda d: d[: len(d) - 100], id="truncate"),
    ],
)
async def test_corrupt_blob_is_refused_and_nothing_is_left(service: Service, damage: Callable[[bytes], bytes]) -> None:
    app, _, client = service
    sandbox = await client.create()
    await client.exec(sandbox["id"], ["sh", "-c", "head -c 2000000 /dev/urandom > /workspace/r.bin; echo hi > t"])
    snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
    await _corrupt_blob(app, snapshot["id"], damage)
    with pytest.raises(ApiError) as err:
        await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={"labels": {"restored": "1"}})
    assert (err.value.status, err.value.code) == (422, "snapshot_corrupt")
    assert await client.list_sandboxes({"restored": "1"}) == []
    assert await provider_of(app).list({"restored": "1"}) == []


async def test_swapped_manifests_are_refused(service: Service) -> None:
    app, _, client = service
    sandbox = await client.create()
    await client.exec(sandbox["id"], ["sh", "-c", "echo one > /workspace/a"])
    one = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
    await client.exec(sandbox["id"], ["sh", "-c", "echo two > /workspace/a"])
    two = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
    blobs = app.state.services.blobs
    manifest_one = await blobs.get_bytes(f"snapshots/{one['id']}.json")
    manifest_two = await blobs.get_bytes(f"snapshots/{two['id']}.json")
    await blobs.put_bytes(f"snapshots/{one['id']}.json", manifest_two)
    # Same id rewritten into the other's manifest: the hash no longer matches the record.
    forged = json.loads(manifest_one)
    forged["sha256"] = json.loads(manifest_two)["sha256"]
    await blobs.put_bytes(f"snapshots/{two['id']}.json", json.dumps(forged).encode())
    for snapshot in (one, two):
        with pytest.raises(ApiError) as err:
            await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={"labels": {"swap": "1"}})
        assert (err.value.status, err.value.code) == (422, "snapshot_corrupt")
    assert await client.list_sandboxes({"swap": "1"}) == []


def _hostile_archive(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        root = tarfile.TarInfo("workspace")
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        tar.addfile(root)
        info = tarfile.TarInfo({"dotdot": "workspace/../../etc/evil", "absolute": "/etc/evil"}.get(kind, "workspace/x"))
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc"
            tar.addfile(info)
            payload = tarfile.TarInfo("workspace/x/evil")
            payload.size = 4
            tar.addfile(payload, io.BytesIO(b"evil"))
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return zstandard.ZstdCompressor().compress(buffer.getvalue())


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
async def test_hostile_archives_are_refused(service: Service, kind: str) -> None:
    import hashlib

    app, _, client = service
    services = app.state.services
    blob = _hostile_archive(kind)
    snapshot_id = f"snap_hostile{kind}"
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        sandbox_id="attacker",
        provider="local",
        paths=["/workspace"],
        raw_size=10_240,
        compressed_size=len(blob),
        file_count=2,
        sha256=hashlib.sha256(blob).hexdigest(),
        reason="manual",
        created_at=utcnow(),
    )
    await services.blobs.put_bytes(manifest.blob_key, blob)
    await services.blobs.put_bytes(manifest.manifest_key, manifest.to_bytes())
    now = utcnow()
    await services.store.snapshots.insert(
        SnapshotRecord(
            id=snapshot_id,
            sandbox_id="attacker",
            provider="local",
            status="ready",
            created_at=now,
            updated_at=now,
            size_bytes=len(blob),
            sha256=manifest.sha256,
        )
    )
    with pytest.raises(ApiError) as err:
        await client.request("POST", f"/v1/snapshots/{snapshot_id}/restore", json={"labels": {"hostile": kind}})
    assert err.value.status == 422 and err.value.code.startswith("snapshot_")
    assert await client.list_sandboxes({"hostile": kind}) == []


async def test_restore_on_another_service_instance(
    local_settings: Callable[..., Settings], tmp_path: Path, store_settings: dict[str, Any]
) -> None:
    """A snapshot taken by one service restores on another that shares only the blob store."""
    tree = build_sample_tree(tmp_path / "tree")
    first_settings = local_settings("first")
    async with serve_in_process(first_settings) as (app, _, client):
        source = await client.create()
        await fill_workspace(app, source, tree)
        snapshot = await client.request("POST", f"/v1/sandboxes/{source['id']}/snapshots", json={})
        await _delete_all(client)
    second_settings = local_settings("second")
    if not store_settings:  # the directory store: point the second service at the same blob dir
        second_settings.data_dir.mkdir(parents=True, exist_ok=True)
        (second_settings.data_dir / "blobs").symlink_to(first_settings.data_dir / "blobs")
    async with serve_in_process(second_settings) as (app, _, client):
        # No record here: the service adopts the snapshot from its manifest.
        found = await client.request("GET", f"/v1/snapshots/{snapshot['id']}")
        assert (found["sha256"], found["status"]) == (snapshot["sha256"], "ready")
        restored = await client.request("POST", f"/v1/snapshots/{snapshot['id']}/restore", json={})
        assert await workspace_hash(app, restored, tmp_path / "out") == tree_hash(tree)
        await _delete_all(client)


@pytest.mark.s3
async def test_s3_outage_mid_upload(
    make_settings: Callable[..., Settings], provider_workdir: Path, s3_server: Any, s3_bucket: str
) -> None:
    """S3 stops during a v1 multipart upload: 503, no manifest, no ready record; fine again once S3 is back.

    (Format v2 under the same outage: ``test_snapshot_chunks.test_s3_outage_mid_chunks``.)
    """
    settings = make_settings(
        snapshot_format="v1",
        provider="local",
        data_dir=provider_workdir / "data",
        s3_endpoint=s3_server.endpoint,
        s3_bucket=s3_bucket,
        s3_access_key=SecretStr(s3_server.access_key),
        s3_secret_key=SecretStr(s3_server.secret_key),
    )
    async with serve_in_process(settings) as (_, _, client):
        sandbox = await client.create()
        await client.exec(sandbox["id"], ["sh", "-c", "head -c 60000000 /dev/urandom > /workspace/big.bin"])
        task = asyncio.create_task(client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={}))

        def multipart(s3: Any) -> bool:
            return bool(s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"))

        async with s3_down_during(s3_server, s3_bucket, task, multipart):
            with pytest.raises(ApiError) as err:
                await task
            assert (err.value.status, err.value.code) == (503, "storage_unavailable")
            listed = await client.request("GET", f"/v1/sandboxes/{sandbox['id']}/snapshots")
            assert [s["status"] for s in listed["snapshots"]] == ["failed"]
        keys = await asyncio.to_thread(s3_server.client().list_objects_v2, Bucket=s3_bucket)
        assert not [o for o in keys.get("Contents", []) if o["Key"].endswith(".json")]
        again = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
        assert again["status"] == "ready"
        await client.delete(sandbox["id"])
