"""Restoring one snapshot path through several ``tar -x`` at once ("lanes"), over disjoint subtrees.

Creating files is where a restore of many small files spends its time (kernel inode
allocation), and one ``tar`` creates them one at a time. An importer that can run several
asks a section stream for ``rounds(lanes)`` instead of reading it (see ``reader``): a
sequence of rounds, each a list of tar streams to extract *concurrently* into the same
directory, each round only after the previous one has been extracted completely.

How members are cut so that concurrent extraction is exactly as safe as one ``tar``:

* Lanes own subtrees. A directory entry whose parent owns a lane may own one too (the
  least loaded; at most ``MAX_SPLIT_DIRS`` of them); every other member goes to the lane
  of its nearest owning ancestor, in archive order. A lane therefore extracts what a
  single tar would for its subtrees. A directory that goes to another lane than its
  parent is preceded there by the entries of its open ancestors: each tar creates the
  directories it needs from entries (two tars creating the same missing parent
  implicitly make one of them fail).
* Links. Owning is closed upwards (a directory owns a lane only if its parent does), and
  a non-directory member may not take the name of a directory that owns a lane or whose
  times are fixed up below (refused as unsafe). So a symlink and everything below its
  name share one lane and its archive order: no tar ever writes through a link another
  tar created. The ``EntryGuard`` rules (nothing through an earlier symlink, no name
  reused after one) hold as always.
* Hard links need their target on disk: one whose target lies in another lane ends the
  round (every lane's tar finishes) and goes into the next. After ``MAX_ROUNDS`` rounds
  the rest of the path goes through a single lane.
* Directory times. A lane creating a subdirectory, or a later round adding entries,
  changes the mtime of a directory that another tar already set. Such directories (and
  the ancestors re-emitted above) are re-emitted (headers only) in a last round of one
  stream, after every lane is done.

Memory: the owner map and the fix-up list (both capped), and one queue of at most
``LANE_QUEUE_BATCHES`` batches per lane. The end-of-archive markers of a round that ends
with the path come only once the path's last member is through, which for the last path
is after the blob was verified (see ``reader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from app.snapshots.safe_tar import UnsafeEntry
from app.snapshots.tarstream import TarEmitter, TarReader

#: Directories that may own a lane (beyond this, new directories inherit their parent's).
MAX_SPLIT_DIRS = 4096
#: Rounds before the rest of a path goes through one lane (each round restarts the tars).
MAX_ROUNDS = 8
#: Directories whose times are re-applied at the end; beyond this they may keep the
#: time of their last change (never a safety matter: only a crafted archive gets here).
MAX_FIXUPS = 4096
#: A lane's batch is handed over at this size.
LANE_BATCH_BYTES = 256 * 1024
#: Batches waiting per lane before the producer waits for that lane.
LANE_QUEUE_BATCHES = 8

#: Members of one path, in archive order: (cleaned header, reader positioned at its data).
Members = AsyncIterator[tuple[tarfile.TarInfo, TarReader]]
#: Writes one member (header and data) into an emitter, yielding batches as they fill.
EmitMember = Callable[[TarEmitter, tarfile.TarInfo, TarReader, int], AsyncIterator[bytes]]


def _parent(name: str) -> str:
    head, _, _ = name.rpartition("/")
    return head or "."


class Route(NamedTuple):
    """Where a member goes: its lane, and directory entries to emit there before it."""

    lane: int
    before: list[tarfile.TarInfo]


@dataclass
class _OpenDir:
    name: str
    info: tarfile.TarInfo
    touched: bool = False


@dataclass
class LaneRouter:
    """Decides the lane of each member of one path; bookkeeping only, no I/O.

    ``root`` is the snapshot path (for error messages); names are the guard's cleaned,
    path-relative names (``.`` is the path itself).
    """

    lanes: int
    root: str
    rounds: int = 1
    serial: bool = False
    #: Directory -> the lane that owns it (closed upwards: the parent of an owner owns too).
    _owners: dict[str, int] = field(default_factory=lambda: {".": 0})
    #: Explicit directories containing the current member (archives are written depth first).
    _open: list[_OpenDir] = field(default_factory=list)
    fixups: list[tarfile.TarInfo] = field(default_factory=list)
    _fixup_names: set[str] = field(default_factory=set)
    _spread: int = 0

    def __post_init__(self) -> None:
        self.serial = self.serial or self.lanes < 2

    def lane_of(self, directory: str) -> int:
        """The lane that extracts entries of ``directory`` (its nearest owning ancestor's)."""
        name = directory
        for _ in range(directory.count("/") + 2):  # bounded: one step per component
            lane = self._owners.get(name)
            if lane is not None:
                return lane
            name = _parent(name)
        return 0

    def route(self, info: tarfile.TarInfo, loads: Sequence[int], *, target_ready: bool = False) -> Route | None:
        """Where ``info`` goes, or ``None``: end the round first, then route it again.

        ``loads`` are the lanes' queued bytes. ``target_ready``: a hard link's target
        is already on disk (it was extracted in an earlier round).
        """
        name = info.name
        if name == ".":
            self._leave(".")
            self._open = [_OpenDir(".", info)]
            return Route(0, [])
        parent = _parent(name)
        self._leave(parent)
        if info.type != tarfile.DIRTYPE and (name in self._owners or name in self._fixup_names):
            raise UnsafeEntry(f"{self.root.rstrip('/')}/{name}", "a non-directory member reuses a directory's name")
        if self.serial:
            return Route(0, [])
        if info.type == tarfile.DIRTYPE:
            lane = self._owners.get(name, -1)
            if lane < 0 and parent in self._owners and len(self._owners) < MAX_SPLIT_DIRS:
                lane = self._owners[name] = self._least_loaded(loads)
            elif lane < 0:
                lane = self.lane_of(parent)
        else:
            lane = self.lane_of(parent)
            if info.type == tarfile.LNKTYPE and not target_ready and self.lane_of(_parent(info.linkname)) != lane:
                return None
        before: list[tarfile.TarInfo] = []
        if lane != self.lane_of(parent):
            # The other tar may not have created the parents yet: this one creates them
            # from their entries, and changes their times: all are fixed up at the end.
            for entry in self._open:
                entry.touched = True
                if entry.name != ".":
                    before.append(entry.info)
        if info.type == tarfile.DIRTYPE:
            self._open.append(_OpenDir(name, info))
        return Route(lane, before)

    def new_round(self) -> None:
        """The current round ended: directories still open get entries from new tars."""
        for entry in self._open:
            entry.touched = True
        self.rounds += 1
        if self.rounds >= MAX_ROUNDS:
            self.serial = True

    def finish(self) -> list[tarfile.TarInfo]:
        """The directories whose times must be re-applied once every lane is done."""
        self._leave(None)
        return self.fixups

    def _least_loaded(self, loads: Sequence[int]) -> int:
        # Ties go round-robin, so that empty lanes fill up evenly from the start.
        self._spread += 1
        order = [(self._spread + i) % self.lanes for i in range(self.lanes)]
        return min(order, key=lambda lane: loads[lane])

    def _leave(self, parent: str | None) -> None:
        """Close the open directories that are not ``parent`` or one of its ancestors."""
        while self._open:
            top = self._open[-1].name
            if parent is not None and (top == "." or parent == top or parent.startswith(top + "/")):
                return
            closed = self._open.pop()
            if closed.touched and len(self.fixups) < MAX_FIXUPS:
                self.fixups.append(closed.info)
                self._fixup_names.add(closed.name)


class _End:
    """Queue marker: the lane's tar stream is complete."""


_END = _End()


class _Lane:
    """One lane of one round: a bounded queue of batches from the producer to the importer."""

    def __init__(self) -> None:
        self.emitter = TarEmitter()
        self.queue: asyncio.Queue[bytes | _End | BaseException] = asyncio.Queue(LANE_QUEUE_BATCHES)
        self.queued = 0
        self.done = False

    async def put(self, batch: bytes) -> None:
        self.queued += len(batch)
        await self.queue.put(batch)

    async def end(self) -> None:
        self.emitter.finish()
        await self.put(self.emitter.take())
        await self.queue.put(_END)

    def fail(self, exc: BaseException) -> None:
        # The stream is failing anyway: drop what waits so the error gets in without blocking.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(exc)

    async def stream(self) -> AsyncGenerator[bytes, None]:
        while True:  # bounded: the producer ends every lane with _END or an error
            item = await self.queue.get()
            if isinstance(item, _End):
                self.done = True
                return
            if isinstance(item, BaseException):
                raise item
            self.queued -= len(item)
            yield item


async def lane_rounds(
    members: Members,
    router: LaneRouter,
    emit_member: EmitMember,
    *,
    on_error: Callable[[Exception], None],
    on_complete: Callable[[], None],
) -> AsyncGenerator[list[AsyncIterator[bytes]], None]:
    """Rounds of concurrent lane streams for one path's ``members`` (see the module docstring).

    ``on_error`` sees the exception that ended the members (it also reaches every
    lane); ``on_complete`` runs once every round was read to its end.
    """
    pending: tuple[tarfile.TarInfo, TarReader] | None = None
    section_over = False
    while not section_over:
        lanes = [_Lane() for _ in range(1 if router.serial else router.lanes)]
        producer = asyncio.ensure_future(_fill(members, router, emit_member, lanes, pending, on_error))
        try:
            yield [lane.stream() for lane in lanes]
            if not all(lane.done for lane in lanes):
                return  # not read to the end: the caller sees the path as unfinished
            # Every lane got its end marker, so the producer has returned (or is returning).
            pending = await producer
        finally:
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
        section_over = pending is None
        if not section_over:
            router.new_round()
    fixups = router.finish()
    if fixups:
        last = _Lane()
        for info in fixups:
            last.emitter.header(info)
        await last.end()
        yield [last.stream()]
        if not last.done:
            return
    on_complete()


async def _fill(
    members: Members,
    router: LaneRouter,
    emit_member: EmitMember,
    lanes: list[_Lane],
    pending: tuple[tarfile.TarInfo, TarReader] | None,
    on_error: Callable[[Exception], None],
) -> tuple[tarfile.TarInfo, TarReader] | None:
    """Route members into ``lanes`` until the path ends (→ None) or a round must end (→ that member)."""
    try:
        target_ready = pending is not None
        while True:  # bounded by the members iterator, which is bounded itself
            item = pending if pending is not None else await anext(members, None)
            pending = None
            if item is None:
                break
            info, reader = item
            route = router.route(info, [lane.queued for lane in lanes], target_ready=target_ready)
            target_ready = False
            if route is None:
                for lane in lanes:
                    await lane.end()
                return item
            lane = lanes[route.lane]
            for ancestor in route.before:
                lane.emitter.header(ancestor)
            async for batch in emit_member(lane.emitter, info, reader, LANE_BATCH_BYTES):
                await lane.put(batch)
        for lane in lanes:
            await lane.end()
        return None
    except Exception as exc:
        on_error(exc)
        for lane in lanes:
            lane.fail(exc)
        raise
