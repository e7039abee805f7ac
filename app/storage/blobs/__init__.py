"""The blob store: immutable byte objects under flat keys (snapshot archives, manifests).

``base`` is the contract, ``directory`` the embedded default, ``s3`` AWS S3 / MinIO / R2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.storage.blobs.base import BlobStore
from app.storage.blobs.directory import DirectoryBlobStore

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["BlobStore", "DirectoryBlobStore", "create_blob_store"]


def create_blob_store(settings: Settings) -> BlobStore:
    """The store the settings ask for: S3 when ``S3_BUCKET`` is set, else a directory.

    The store is not opened; call ``await store.open()`` (or ``async with``) first.
    """
    if settings.s3_bucket:
        # Imported here so a directory-only deployment never pays for importing boto3.
        from app.storage.blobs.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    return DirectoryBlobStore(settings.data_dir / "blobs")
