"""Repo image builds: persisted jobs, a build sandbox per job, signed callbacks.

A build is written to the state store before it is answered, and every step
after that is recorded before the next one starts, so a service killed at any
point finishes the job after it comes back (``resume``):

    queued ──▶ building (sandbox id recorded, then the sandbox created, env dropped)
           ──▶ [runtime in boot mode ``build`` runs clone + setup.sh inside it]
           ──▶ repo image saved (id recorded) ──▶ sandbox deleted ──▶ callback queued ──▶ ready
    any step fails, times out or is cancelled ──▶ sandbox deleted ──▶ failure callback ──▶ failed/cancelled

The runtime runs as the sandbox's entry command under a recording wrapper,
so the build goes on while the service is down; ``app.services.builds.follower``
reads its log and result through ``exec``, on every provider alike.

Callbacks go through the durable outbox (``CallbackOutbox``): the success
body ``{build_id, provider_image_id, base_sha, build_duration_seconds}`` to
``callback_url``, the failure body ``{build_id, error}`` to its
``build-failed`` sibling. The idempotency key is per build and outcome, so
re-queueing after a restart is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta

from app.errors import (
    BadRequest,
    BuildConflict,
    BuildNotFound,
    NotConfigured,
    ReservedEnvNames,
    SandboxControlError,
    SandboxNotFound,
)
from app.logging import get_logger
from app.providers.base import Provider
from app.schemas.common import RESERVED_LABEL_PREFIX, validate_env
from app.schemas.sandboxes import CreateSandboxRequest
from app.services.builds.follower import BuildFailed, BuildFollower, BuildStopped, build_command
from app.services.builds.notices import BuildNotice, failure_notice, ready_notice
from app.services.callbacks import CallbackOutbox
from app.services.hosts import check_url_allowed
from app.services.leases import LeaseKeeper
from app.services.reconciler import adopt_interrupted
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService, describe_error, new_sandbox_id
from app.services.sessions import SessionService
from app.settings import Settings
from app.storage.state.builds import ACTIVE_BUILD_STATUSES, BuildRecord, BuildStore
from app.storage.state.times import utcnow
from sandbox_runtime.contract import BootMode
from sandbox_runtime.sandbox_env import find_reserved_env_names

log = get_logger("builds")

#: Label on build sandboxes, valued with the build id.
BUILD_LABEL = RESERVED_LABEL_PREFIX + "build"
#: Extra lifetime of a build sandbox beyond the build timeout: the reaper's backstop.
SANDBOX_TTL_MARGIN = 600


class BuildService:
    """Submit, run, follow, cancel and resume builds."""

    def __init__(
        self,
        settings: Settings,
        records: BuildStore,
        provider: Provider,
        sandboxes: SandboxService,
        sessions: SessionService,
        repo_images: RepoImageService,
        outbox: CallbackOutbox | None,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.settings = settings
        self._leases = leases
        self.records = records
        self.provider = provider
        self.sandboxes = sandboxes
        self.sessions = sessions
        self.repo_images = repo_images
        self.outbox = outbox
        self._slots = asyncio.Semaphore(settings.build_concurrency)
        self._follower = BuildFollower(
            provider.exec,
            records,
            timeout_seconds=settings.build_timeout_seconds,
            poll_seconds=settings.build_poll_seconds,
            max_log_bytes=settings.build_log_max_bytes,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    # -- submitting --------------------------------------------------------

    def _check(self, repo_owner: str, repo_name: str, callback_url: str | None, env: Mapping[str, str]) -> None:
        if callback_url is not None:
            check_url_allowed(callback_url, self.settings.allowed_control_plane_hosts, field="callback_url")
            if self.outbox is None:
                raise NotConfigured("build callbacks need INTERNAL_CALLBACK_SECRET to be configured")
        reserved = find_reserved_env_names(env)
        if reserved:
            raise ReservedEnvNames(reserved)
        try:
            validate_env(dict(env))
        except ValueError as exc:
            raise BadRequest(str(exc), field="user_env_vars") from None

    async def submit(
        self,
        *,
        build_id: str,
        repo_owner: str,
        repo_name: str,
        branch: str | None,
        callback_url: str | None,
        env: Mapping[str, str] | None = None,
    ) -> BuildRecord:
        """Persist a build and start it in the background; the same id twice is one build.

        Raises ``HostNotAllowed`` (400) for a callback host outside
        ``ALLOWED_CONTROL_PLANE_HOSTS`` and ``BuildConflict`` (409) when the id
        exists with another repository, branch or callback URL.
        """
        env = dict(env or {})
        self._check(repo_owner, repo_name, callback_url, env)
        now = utcnow()
        record = BuildRecord(
            id=build_id,
            repo_owner=repo_owner,
            repo_name=repo_name,
            branch=branch,
            status="queued",
            callback_url=callback_url,
            pending_env=env,
            created_at=now,
            updated_at=now,
        )
        stored, created = await self.records.insert(record)
        if not created:
            if (stored.repo_owner, stored.repo_name, stored.branch, stored.callback_url) != (
                repo_owner,
                repo_name,
                branch,
                callback_url,
            ):
                raise BuildConflict(f"build {build_id!r} exists with another request", build_id=build_id)
            return stored
        log.info("build.queued", build_id=build_id, repo=f"{repo_owner}/{repo_name}", branch=branch)
        self._spawn(build_id)
        return stored

    def _spawn(self, build_id: str) -> None:
        if self._closing or build_id in self._tasks:
            return
        task = asyncio.create_task(self._run(build_id), name=f"build:{build_id}")
        self._tasks[build_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(build_id, None))

    # -- reading -----------------------------------------------------------

    async def get(self, build_id: str) -> BuildRecord:
        record = await self.records.get(build_id)
        if record is None:
            raise BuildNotFound(f"build {build_id!r} not found", build_id=build_id)
        return record

    async def find(self, build_id: str) -> BuildRecord | None:
        """A build by id, or None."""
        return await self.records.get(build_id)

    async def log_chunks(self, build_id: str, *, after_seq: int = 0) -> list[tuple[int, str]]:
        """Stored log chunks after ``after_seq`` as (seq, text)."""
        await self.get(build_id)
        return await self.records.read_log(build_id, after_seq=after_seq)

    async def follow(
        self, build_id: str, *, after_seq: int = 0, poll_seconds: float = 0.5
    ) -> AsyncIterator[tuple[int, str] | BuildRecord]:
        """Log chunks as they are stored, then the finished record; for SSE."""
        await self.get(build_id)
        while True:
            # The status is read before the chunks: once it is final, these chunks are the last.
            record = await self.get(build_id)
            while chunks := await self.records.read_log(build_id, after_seq=after_seq):
                for seq, text in chunks:
                    after_seq = seq
                    yield seq, text
            if not record.active:
                yield record
                return
            await asyncio.sleep(poll_seconds)

    # -- cancelling --------------------------------------------------------

    async def cancel(self, build_id: str) -> BuildRecord:
        """Stop a queued or running build: its sandbox is deleted and the failure callback sent."""
        record = await self.get(build_id)
        if not record.active:
            return record
        cancelled = await self.records.update(
            build_id, only_if_status=ACTIVE_BUILD_STATUSES, status="cancelled", error="build cancelled"
        )
        if cancelled is None:  # it finished meanwhile
            return await self.get(build_id)
        task = self._tasks.get(build_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._end(build_id, "cancelled", "build cancelled")
        log.info("build.cancelled", build_id=build_id)
        return await self.get(build_id)

    # -- running -----------------------------------------------------------

    async def resume(self) -> int:
        """Pick up every unfinished build no live replica runs, and finish ending interrupted ones.

        Called at start and then periodically by every replica: each build runs
        under its lease ``build:<id>``, so the replica that takes the lease runs
        it and the others leave it; a dead replica's builds are taken over once
        their leases run out.
        """
        resumed = 0
        for record in await self.records.list(statuses=ACTIVE_BUILD_STATUSES):
            if record.id not in self._tasks:
                self._spawn(record.id)
                resumed += 1
        for record in await self.records.list(statuses=("failed", "cancelled")):
            if record.finished_at is None:  # the service stopped half-way through ending it
                await self._leased(
                    record.id, functools.partial(self._end, record.id, record.status, record.error or "")
                )
        if resumed:
            log.debug("build.resumed", count=resumed)
        return resumed

    async def _leased(self, build_id: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Run ``work`` under the build's lease (at once without leases); False when another replica has it."""
        if self._leases is None:
            await work()
            return True
        return await self._leases.run_leased(f"build:{build_id}", work)

    async def aclose(self) -> None:
        """Stop the workers; their builds stay in the store and resume at the next start."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, build_id: str) -> None:
        # The slot first: a build waiting in this replica's queue must not hold its lease.
        async with self._slots:
            if not await self._leased(build_id, lambda: self._guarded(build_id)):
                log.debug("build.elsewhere", build_id=build_id)

    async def _guarded(self, build_id: str) -> None:
        try:
            await self._advance(build_id)
        except asyncio.CancelledError:
            raise
        except BuildStopped:
            log.info("build.stopped", build_id=build_id)
        except BuildFailed as exc:
            await self._fail(build_id, str(exc))
        except Exception as exc:  # anything unexpected ends the build, never the worker silently
            log.warning("build.error", build_id=build_id, error=describe_error(exc), error_type=type(exc).__name__)
            await self._fail(build_id, f"build failed: {describe_error(exc)}")

    async def _advance(self, build_id: str) -> None:
        build = await self.get(build_id)
        if not build.active:
            return
        if build.repo_image_id is None:
            sandbox_ref = await self._ensure_sandbox(build)
            build = await self.get(build_id)
            if sandbox_ref is None or not build.active:
                return
            base_sha = await self._follower.watch(build, sandbox_ref)
            sandbox = await self.sandboxes.get(build.sandbox_id or "")
            image = await self.repo_images.save(sandbox, build_id=build.id, base_sha=base_sha, branch=build.branch)
            updated = await self.records.update(
                build.id, only_if_status=("building",), repo_image_id=image.id, base_sha=base_sha
            )
            if updated is None:  # cancelled while the image was saved
                await self.repo_images.delete(image.id)
                return
            build = updated
        await self._succeed(build)

    async def _ensure_sandbox(self, build: BuildRecord) -> str | None:
        """The running build sandbox's provider ref: the recorded one, or a new one; None once cancelled."""
        if build.sandbox_id is not None:
            existing = await self.sandboxes.find(build.sandbox_id)
            if existing is not None and existing.status == "creating" and not self.sandboxes.is_creating(existing.id):
                # Its runner died mid-create (we hold the build's lease): the sandbox it made runs the build.
                existing = await adopt_interrupted(self.sandboxes.records, self.provider, existing)
            if existing is not None and existing.status == "running" and existing.provider_object_id:
                return existing.provider_object_id
            if build.pending_env is None:
                # The environment is dropped once the sandbox exists, and the sandbox is gone.
                raise BuildFailed("the build sandbox was lost while the service was down; run the build again")
            await self._delete_sandbox(build.sandbox_id)
        if build.pending_env is None:
            raise BuildFailed("the build was interrupted before it started; run the build again")
        sandbox_id = new_sandbox_id()
        started = utcnow()
        deadline = started + timedelta(seconds=self.settings.build_timeout_seconds)
        # Recorded before the create, so a crash in between leaves a name to clean up.
        marked = await self.records.update(
            build.id,
            only_if_status=ACTIVE_BUILD_STATUSES,
            status="building",
            sandbox_id=sandbox_id,
            started_at=started,
            deadline_at=deadline,
            log_offset=0,
        )
        if marked is None:
            return None
        env = await self.sessions.runtime_env(
            sandbox_id=sandbox_id,
            repo_owner=build.repo_owner,
            repo_name=build.repo_name,
            boot_mode=BootMode.BUILD,
            branch=build.branch,
            user_env=build.pending_env,
        )
        request = CreateSandboxRequest(
            sandbox_id=sandbox_id,
            command=build_command(self.provider.runtime_command()),
            # The reaper's backstop, within the TTL limit callers have too.
            ttl_seconds=min(self.settings.build_timeout_seconds + SANDBOX_TTL_MARGIN, self.settings.max_ttl_seconds),
        )
        record = await self.sandboxes.create(
            request,
            extra_env=env,
            service_labels={BUILD_LABEL: build.id},
            repo_owner=build.repo_owner,
            repo_name=build.repo_name,
        )
        await self.records.update(build.id, pending_env=None)
        log.info("build.started", build_id=build.id, sandbox_id=sandbox_id)
        assert record.provider_object_id is not None
        return record.provider_object_id

    # -- ending ------------------------------------------------------------

    async def _succeed(self, build: BuildRecord) -> None:
        if build.sandbox_id:
            await self._delete_sandbox(build.sandbox_id)
        started = build.started_at or build.created_at
        duration = round((utcnow() - started).total_seconds(), 3)
        await self._notify(ready_notice(build, duration))
        await self.records.update(
            build.id, only_if_status=ACTIVE_BUILD_STATUSES, status="ready", finished_at=utcnow(), error=None
        )
        log.info("build.ready", build_id=build.id, repo_image_id=build.repo_image_id, seconds=duration)

    async def _fail(self, build_id: str, error: str) -> None:
        failed = await self.records.update(
            build_id, only_if_status=ACTIVE_BUILD_STATUSES, status="failed", error=error[-8000:]
        )
        if failed is None:  # cancelled or finished by someone else
            return
        log.warning("build.failed", build_id=build_id, error=error[-500:])
        await self._end(build_id, "failed", error)

    async def _end(self, build_id: str, status: str, error: str) -> None:
        """Clean up after a failed or cancelled build and queue its failure callback (idempotent)."""
        build = await self.get(build_id)
        if build.sandbox_id:
            await self._delete_sandbox(build.sandbox_id)
        if build.repo_image_id:
            await self.repo_images.delete(build.repo_image_id)
        await self._notify(failure_notice(build, error))
        await self.records.update(build_id, finished_at=build.finished_at or utcnow(), pending_env=None)

    async def _notify(self, notice: BuildNotice | None) -> None:
        if notice is not None and self.outbox is not None:  # a callback_url is refused without an outbox
            await self.outbox.enqueue(notice.url, notice.body, kind=notice.kind, idempotency_key=notice.idempotency_key)

    async def _delete_sandbox(self, sandbox_id: str) -> None:
        try:
            await asyncio.shield(self.sandboxes.delete(sandbox_id))
        except SandboxNotFound:
            pass
        except SandboxControlError as exc:  # the TTL reaper is the backstop
            log.warning("build.sandbox_delete_failed", sandbox_id=sandbox_id, error=str(exc))
