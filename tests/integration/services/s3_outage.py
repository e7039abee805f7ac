"""Stopping the test S3 server in the middle of an upload, and bringing it back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any


@contextlib.asynccontextmanager
async def s3_down_during(
    s3_server: Any, bucket: str, task: asyncio.Task[Any], under_way: Callable[[Any], bool]
) -> AsyncIterator[None]:
    """Once ``under_way(s3_client)`` (or ``task`` ended), stop S3 for the body; restart it after."""
    s3 = s3_server.client()
    for _ in range(400):  # bounded: 20 s
        if task.done() or await asyncio.to_thread(under_way, s3):
            break
        await asyncio.sleep(0.05)
    s3_server.stop()
    try:
        yield
    finally:
        s3_server.start()
    # moto keeps nothing across a restart; a real S3 keeps its bucket. Recreate it.
    await asyncio.to_thread(s3_server.client().create_bucket, Bucket=bucket)
