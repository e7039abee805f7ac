"""A provider wrapper that records every call's latency and outcome."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

from app.metrics import Metrics
from app.providers.base import (
    Capabilities,
    ExecEvent,
    ExecResult,
    ExitEvent,
    Provider,
    ProviderSandbox,
    ProviderStatus,
    SandboxSpec,
)
from app.providers.ports import PortEndpoint
from app.providers.terminal import PtySession
from app.streams import aclose_stream

T = TypeVar("T")


class InstrumentedProvider(Provider):
    """Delegates to ``inner`` and observes ``sandbox_provider_call_duration_seconds``."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        # Read through: a provider may learn its capabilities in aopen (e.g. GPUs).
        return self.inner.capabilities

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self._metrics.provider_latency.labels(self.name, operation, outcome).observe(time.perf_counter() - started)

    async def aopen(self) -> None:
        await self.inner.aopen()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def runtime_command(self) -> list[str]:
        return self.inner.runtime_command()

    def watch_exits(self) -> AsyncIterator[ExitEvent]:
        return self.inner.watch_exits()  # a stream that lasts, not a call to time

    async def ping(self) -> None:
        with self._timed("ping"):
            await self.inner.ping()

    async def create(self, spec: SandboxSpec) -> ProviderSandbox:
        with self._timed("create"):
            return await self.inner.create(spec)

    async def start(self, ref: str) -> None:
        with self._timed("start"):
            await self.inner.start(ref)

    async def stop(self, ref: str) -> None:
        with self._timed("stop"):
            await self.inner.stop(ref)

    async def delete(self, ref: str) -> None:
        with self._timed("delete"):
            await self.inner.delete(ref)

    async def status(self, ref: str) -> ProviderStatus:
        with self._timed("status"):
            return await self.inner.status(ref)

    async def list(self, labels: Mapping[str, str] | None = None) -> list[ProviderSandbox]:
        with self._timed("list"):
            return await self.inner.list(labels)

    async def exec(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> ExecResult:
        with self._timed("exec"):
            return await self.inner.exec(
                ref, argv, timeout=timeout, cwd=cwd, env=env, stdin=stdin, max_output_bytes=max_output_bytes
            )

    async def _stream(self, operation: str, chunks: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        with self._timed(operation):
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                # A consumer that stops early must still end the provider's stream
                # (and the process or request behind it).
                await aclose_stream(chunks)

    def exec_stream(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: AsyncIterator[bytes] | None = None,
        max_output_bytes: int = 1 << 20,
    ) -> AsyncGenerator[ExecEvent, None]:
        events = self.inner.exec_stream(
            ref, argv, timeout=timeout, cwd=cwd, env=env, stdin=stdin, max_output_bytes=max_output_bytes
        )
        return self._stream("exec_stream", events)

    def open_pty(
        self,
        ref: str,
        argv: Sequence[str],
        *,
        cols: int,
        rows: int,
        timeout: float,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PtySession:
        return self.inner.open_pty(ref, argv, cols=cols, rows=rows, timeout=timeout, cwd=cwd, env=env)

    def read_file(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._stream("read_file", self.inner.read_file(ref, path))

    async def write_file(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        with self._timed("write_file"):
            await self.inner.write_file(ref, path, data)

    def export_tar(self, ref: str, path: str) -> AsyncIterator[bytes]:
        return self._stream("export_tar", self.inner.export_tar(ref, path))

    async def import_tar(self, ref: str, path: str, data: AsyncIterator[bytes]) -> None:
        with self._timed("import_tar"):
            await self.inner.import_tar(ref, path, data)

    async def commit_image(self, ref: str, name: str) -> str:
        with self._timed("commit_image"):
            return await self.inner.commit_image(ref, name)

    async def delete_image(self, image: str) -> bool:
        with self._timed("delete_image"):
            return await self.inner.delete_image(image)

    async def port_endpoint(self, ref: str, port: int) -> PortEndpoint:
        with self._timed("port_endpoint"):
            return await self.inner.port_endpoint(ref, port)
