"""Repo images: a repository cloned and set up at a known commit, ready to boot from.

A build's sandbox becomes a repo image in the provider's best form:

* providers with native images (``capabilities.image_commit``, e.g. docker)
  commit the build sandbox; a new sandbox is created from that image;
* every other provider keeps a snapshot-format blob of the workspace
  (``reason="repo_image"``), restored into a new sandbox at create.

Either way the record's id (``rimg_<16 hex>``) is what callers see as
``provider_image_id``; ids of any other shape are not ours (refused where an
image is used, answered ``deleted: false`` where one is deleted).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from app.errors import BadRequest, RepoImageNotFound, SandboxControlError, SnapshotNotFound
from app.logging import get_logger
from app.providers.base import Provider
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.sandboxes import SandboxService
from app.services.snapshots import SnapshotService
from app.storage.state.repo_images import RepoImageRecord, RepoImageStore
from app.storage.state.sandboxes import SandboxRecord
from app.storage.state.times import utcnow
from sandbox_runtime.contract import DEFAULT_RUN_DIR, BootMode

log = get_logger("repo_images")

REPO_IMAGE_ID = re.compile(r"^rimg_[0-9a-f]{16}$")
#: Repository name of committed native images; the tag is the repo image id.
NATIVE_IMAGE_REPOSITORY = "sandbox-control-repo-image"
#: Ephemeral files of a build that must not end up in its image.
EPHEMERAL_PATHS = (DEFAULT_RUN_DIR, "/tmp/sandbox-build")


def new_repo_image_id() -> str:
    return "rimg_" + secrets.token_hex(8)


def check_repo_image_id(image_id: str, *, field: str) -> None:
    """Refuse ids outside our namespace before anything is looked up."""
    if not REPO_IMAGE_ID.fullmatch(image_id):
        raise BadRequest(f"{field} {image_id!r} is not a repo image id of this service (rimg_<16 hex>)", field=field)


class RepoImageService:
    """Save build sandboxes as repo images; find, use and delete them."""

    def __init__(
        self, records: RepoImageStore, provider: Provider, sandboxes: SandboxService, snapshots: SnapshotService
    ) -> None:
        self.records = records
        self.provider = provider
        self.sandboxes = sandboxes
        self.snapshots = snapshots

    async def save(
        self, sandbox: SandboxRecord, *, build_id: str, base_sha: str, branch: str | None
    ) -> RepoImageRecord:
        """Turn a finished build sandbox into a ready repo image."""
        ref = sandbox.provider_object_id
        if ref is None or sandbox.repo_owner is None or sandbox.repo_name is None:
            raise SandboxControlError(f"sandbox {sandbox.id!r} is not a build sandbox")
        image_id = new_repo_image_id()
        if self.provider.capabilities.image_commit:
            await self.provider.exec(ref, ["rm", "-rf", *EPHEMERAL_PATHS], timeout=60)
            kind, native = "image", await self.provider.commit_image(ref, f"{NATIVE_IMAGE_REPOSITORY}:{image_id}")
        else:
            snapshot = await self.snapshots.snapshot(sandbox.id, reason="repo_image")
            kind, native = "snapshot", snapshot.id
        now = utcnow()
        record = RepoImageRecord(
            id=image_id,
            build_id=build_id,
            provider=self.provider.name,
            kind=kind,
            ref=native,
            repo_owner=sandbox.repo_owner,
            repo_name=sandbox.repo_name,
            branch=branch,
            base_sha=base_sha,
            status="ready",
            created_at=now,
            updated_at=now,
        )
        await self.records.insert(record)
        log.info("repo_image.saved", repo_image_id=image_id, build_id=build_id, kind=kind, base_sha=base_sha)
        return record

    async def get(self, image_id: str, *, field: str = "repo_image_id") -> RepoImageRecord:
        """A ready repo image by id; ``RepoImageNotFound`` for unknown or deleted ones."""
        check_repo_image_id(image_id, field=field)
        record = await self.records.get(image_id)
        if record is None or record.status != "ready":
            raise RepoImageNotFound(f"repo image {image_id!r} not found", repo_image_id=image_id)
        if record.provider != self.provider.name:
            raise BadRequest(
                f"repo image {image_id!r} was built on provider {record.provider!r}, not {self.provider.name!r}",
                field=field,
            )
        return record

    async def latest(self, repo_owner: str, repo_name: str) -> RepoImageRecord | None:
        """The newest ready repo image of a repository on this provider."""
        return await self.records.latest(repo_owner, repo_name, self.provider.name)

    async def delete(self, image_id: str) -> bool:
        """Delete the image or blob; True only if it existed and is gone now.

        Idempotent for callers: an id this service never issued (another
        service's image, an S3 key) is simply not held here, so False.
        """
        if not REPO_IMAGE_ID.fullmatch(image_id):
            log.info("repo_image.delete_unknown", provider_image_id=image_id[:256])
            return False
        record = await self.records.get(image_id)
        if record is None or record.status != "ready":
            return False
        existed = True
        if record.kind == "image":
            existed = await self.provider.delete_image(record.ref)
        else:
            try:
                await self.snapshots.delete(record.ref)
            except SnapshotNotFound:
                existed = False
        won = await self.records.mark_deleted(image_id)
        log.info("repo_image.deleted", repo_image_id=image_id, existed=existed)
        return existed and won

    async def create_sandbox(
        self, image: RepoImageRecord, request: CreateSandboxRequest, *, extra_env: dict[str, str], **fields: Any
    ) -> SandboxRecord:
        """A new sandbox booting from ``image`` (``extra_env`` sets boot mode ``repo_image``)."""
        if image.kind == "image":
            return await self.sandboxes.create(
                request.model_copy(update={"image": image.ref}), extra_env=extra_env, **fields
            )
        return await self.snapshots.restore(
            image.ref, request, extra_env=extra_env, boot_mode=BootMode.REPO_IMAGE, **fields
        )
