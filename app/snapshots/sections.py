"""One tar stream per snapshot path, cut out of the snapshot's single member sequence.

``restore_snapshot`` hands each path's ``Section`` to ``import_tar``. The importer reads
it as one tar stream, or, if it can run several extractions at once, asks for
``rounds(lanes)`` of concurrent lane streams instead (``fanout``). Members arrive checked
(``reader._members``); every header is re-emitted fresh by a ``TarEmitter``.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator

from app.snapshots.decoder import snapshot_corrupt
from app.snapshots.fanout import LaneRouter, lane_rounds
from app.snapshots.manifest import ManifestBase
from app.snapshots.tarstream import TarEmitter, TarFormatError, TarReader

#: Output batch handed to the importer.
BATCH_BYTES = 1 << 20
#: Most members one snapshot path may have.
MAX_ENTRIES = 10_000_000


class SectionPump:
    """Cuts the member sequence into one tar stream per snapshot path."""

    def __init__(
        self, members: AsyncGenerator[tuple[int, tarfile.TarInfo, TarReader], None], manifest: ManifestBase
    ) -> None:
        self.members = members
        self._manifest = manifest
        self._peeked: tuple[int, tarfile.TarInfo, TarReader] | None = None
        self.error: Exception | None = None
        self.finished: set[int] = set()

    async def members_of(self, index: int) -> AsyncGenerator[tuple[tarfile.TarInfo, TarReader], None]:
        """Members of path ``index``, up to where the next path begins."""
        for _ in range(MAX_ENTRIES + 1):  # bounded like the members themselves
            item = self._peeked
            self._peeked = None
            if item is None:
                item = await anext(self.members, None)
            if item is None or item[0] != index:
                self._peeked = item
                return
            yield item[1], item[2]

    async def section(self, index: int) -> AsyncGenerator[bytes, None]:
        """Tar stream of path ``index``; ends (with its end marker) where the next path begins."""
        emitter = TarEmitter()
        try:
            async with contextlib.aclosing(self.members_of(index)) as members:
                async for info, reader in members:
                    async for batch in self.emit_member(emitter, info, reader, BATCH_BYTES):
                        yield batch
        except Exception as exc:
            self.error = exc
            raise
        self.finished.add(index)
        emitter.finish()
        yield emitter.take()

    async def section_rounds(self, index: int, lanes: int) -> AsyncGenerator[list[AsyncIterator[bytes]], None]:
        """Path ``index`` as rounds of concurrent lane streams (see ``fanout``)."""

        def failed(exc: Exception) -> None:
            self.error = exc

        router = LaneRouter(lanes, self._manifest.paths[index])
        async with contextlib.aclosing(self.members_of(index)) as members:
            rounds = lane_rounds(
                members, router, self.emit_member, on_error=failed, on_complete=lambda: self.finished.add(index)
            )
            async with contextlib.aclosing(rounds):
                async for streams in rounds:
                    yield streams

    async def emit_member(
        self, emitter: TarEmitter, info: tarfile.TarInfo, reader: TarReader, batch_bytes: int
    ) -> AsyncGenerator[bytes, None]:
        """Header and data of one member into ``emitter``; yields batches of ``batch_bytes``."""
        async for batch in emit_member(emitter, info, reader, self._manifest, batch_bytes):
            yield batch


class Section:
    """The tar stream of one path handed to ``import_tar``.

    Read it, or, once, call ``rounds(lanes)`` instead: an importer able to run several
    extractions at once gets the same members cut into rounds of concurrent lane
    streams (``fanout``). Either way it is complete only once read to its end. This is
    the ``LaneSplittable`` of the provider contract (``app.providers.base``), matched by
    shape: the archive format does not depend on the providers.
    """

    def __init__(self, pump: SectionPump, index: int) -> None:
        self._pump = pump
        self._index = index
        self._stream: AsyncGenerator[bytes, None] | None = None
        self._rounds: AsyncGenerator[list[AsyncIterator[bytes]], None] | None = None

    def __aiter__(self) -> Section:
        return self

    async def __anext__(self) -> bytes:
        if self._rounds is not None:
            raise RuntimeError("this stream was split into lanes")
        if self._stream is None:
            self._stream = self._pump.section(self._index)
        return await anext(self._stream)

    def rounds(self, lanes: int) -> AsyncGenerator[list[AsyncIterator[bytes]], None]:
        """Rounds of ``lanes`` tar streams to extract concurrently, each round after the previous one."""
        if self._stream is not None or self._rounds is not None:
            raise RuntimeError("this stream is already being read")
        self._rounds = self._pump.section_rounds(self._index, lanes)
        return self._rounds

    async def aclose(self) -> None:
        """Close whichever form was used (stops the producer of the lanes)."""
        for generator in (self._stream, self._rounds):
            if generator is not None:
                await generator.aclose()


async def emit_member(
    emitter: TarEmitter,
    info: tarfile.TarInfo,
    reader: TarReader,
    manifest: ManifestBase,
    batch_bytes: int = BATCH_BYTES,
) -> AsyncGenerator[bytes, None]:
    """Write one member (header, data, padding) into ``emitter``, yielding each batch that fills.

    Reads exactly the member's data from ``reader``; a broken archive raises ``SnapshotCorrupt``.
    """
    emitter.header(info)
    if info.type == tarfile.REGTYPE:
        try:
            for _ in range(info.size + 1):  # bounded: every piece holds >= 1 byte
                piece = await reader.read(BATCH_BYTES)
                if not piece:
                    break
                emitter.data(piece)
                if emitter.pending >= batch_bytes:
                    yield emitter.take()
        except TarFormatError as exc:
            raise snapshot_corrupt(manifest, str(exc)) from exc
        emitter.end_member(info.size)
    if emitter.pending >= batch_bytes:
        yield emitter.take()
