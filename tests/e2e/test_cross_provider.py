"""A snapshot taken on one provider restores on another: docker → local and local → docker.

Two services share only the blob store (the directory store, linked into both
data dirs), as two deployments sharing one bucket would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.provider_settings import DockerSettings
from app.settings import Settings
from tests.fixtures.app import serve_in_process
from tests.fixtures.docker import BASE_IMAGE, DockerEngine
from tests.support_tree import build_sample_tree, tar_extract, tar_stream, tree_hash


async def _snapshot_from(settings: Settings, tree: Path) -> str:
    async with serve_in_process(settings) as (app, _, client):
        sandbox = await client.create(labels={"cross": "source"})
        try:
            provider = app.state.services.provider
            await provider.import_tar(sandbox["provider_object_id"], "/workspace", tar_stream(tree))
            snapshot = await client.request("POST", f"/v1/sandboxes/{sandbox['id']}/snapshots", json={})
            return str(snapshot["id"])
        finally:
            await client.delete(sandbox["id"])


async def _restore_into(settings: Settings, snapshot_id: str, out: Path) -> str:
    async with serve_in_process(settings) as (app, _, client):
        restored = await client.request("POST", f"/v1/snapshots/{snapshot_id}/restore", json={})
        try:
            stream = app.state.services.provider.export_tar(restored["provider_object_id"], "/workspace")
            code, stderr = await tar_extract(stream, out)
            assert code == 0, stderr
            return tree_hash(out, mtimes=True)
        finally:
            await client.delete(restored["id"])


async def test_docker_to_local_and_back(
    make_settings: Callable[..., Settings], provider_workdir: Path, tmp_path: Path, docker_engine: DockerEngine
) -> None:
    blobs = provider_workdir / "shared-blobs"
    blobs.mkdir()

    def settings(name: str, **overrides: Any) -> Settings:
        data_dir = provider_workdir / name
        data_dir.mkdir()
        (data_dir / "blobs").symlink_to(blobs)
        return make_settings(data_dir=data_dir, **overrides)

    docker = settings("docker", provider="docker", base_image=BASE_IMAGE, docker=DockerSettings(network="none"))
    local = settings("local", provider="local")
    tree = build_sample_tree(tmp_path / "tree")
    expected = tree_hash(tree)

    from_docker = await _snapshot_from(docker, tree)
    assert await _restore_into(local, from_docker, tmp_path / "on-local") == expected

    from_local = await _snapshot_from(settings("local-2", provider="local"), tree)
    assert (
        await _restore_into(
            settings("docker-2", provider="docker", base_image=BASE_IMAGE, docker=DockerSettings(network="none")),
            from_local,
            tmp_path / "on-docker",
        )
        == expected
    )
