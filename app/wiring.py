"""The lifespan of one app: build every service from the settings, start the background work, stop it.

Nothing here is a module global: ``lifespan(settings, metrics)`` returns the
FastAPI lifespan for one app instance, and each test builds its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from app.errors import SandboxControlError
from app.logging import configure_logging, get_logger
from app.metrics import Metrics
from app.providers.instrumented import InstrumentedProvider
from app.providers.registry import create_provider
from app.services.background import Periodic
from app.services.builds import BuildService
from app.services.callbacks import CallbackOutbox
from app.services.chunk_gc import ChunkCollector
from app.services.container import Services
from app.services.daytona_sandboxes import DaytonaSandboxes
from app.services.daytona_sessions import DaytonaSessions
from app.services.exits import ExitWatcher
from app.services.file_tree import FileTree
from app.services.files import FileService
from app.services.idempotency import IdempotencyService
from app.services.launcher import SandboxLauncher
from app.services.leases import LeaseKeeper, new_replica_id
from app.services.pools import PoolService
from app.services.previews import PreviewService, PreviewSigner, Upstreams
from app.services.processes import ProcessService
from app.services.reconciler import Reconciler
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService
from app.services.sessions import SessionService, github_tokens_from
from app.services.snapshot_recovery import SnapshotRecovery
from app.services.snapshots import SnapshotService
from app.settings import ConfigError, Settings
from app.storage.blobs import create_blob_store
from app.storage.state import StateStore

log = get_logger("app")


def known_secrets(settings: Settings, api_secrets: list[bytes]) -> list[str]:
    """Every secret value the service holds, so the log redactor can mask them wherever they appear."""
    values = [s.decode() for s in api_secrets]
    for secret in (
        settings.s3_secret_key,
        settings.s3_access_key,
        settings.internal_callback_secret,
        settings.github_app_private_key,
        settings.vcs_clone_token,
        settings.daytona.api_key,
        settings.modal.token_secret,
    ):
        if secret is not None:
            values.append(secret.get_secret_value())
    return values


async def build_services(
    settings: Settings, metrics: Metrics, stack: AsyncExitStack, replica_id: str, api_secrets: list[bytes]
) -> Services:
    """Open the stores and the provider and build the services; ``stack`` closes them in reverse."""
    store = StateStore(settings.effective_state_url)
    await store.open()
    stack.push_async_callback(store.aclose)
    leases = LeaseKeeper(replica_id, store.leases, store.replicas, ttl=settings.lease_ttl_seconds)
    provider = InstrumentedProvider(create_provider(settings.provider, settings), metrics)
    await provider.aopen()
    stack.push_async_callback(provider.aclose)
    blobs = create_blob_store(settings)
    await blobs.open()
    stack.push_async_callback(blobs.aclose)
    tokens = github_tokens_from(settings)
    if tokens is not None:
        stack.push_async_callback(tokens.aclose)

    sandboxes = SandboxService(settings, store.sandboxes, provider, replica_id=replica_id)
    snapshots = SnapshotService(
        settings, store.snapshots, blobs, provider, sandboxes, store.chunks, replica_id=replica_id
    )
    repo_images = RepoImageService(store.repo_images, provider, sandboxes, snapshots)
    sessions = SessionService(settings, sandboxes, snapshots, provider, tokens, repo_images)
    pools = PoolService(settings, store.pools, store.sandboxes, sandboxes, sessions, provider, leases)
    outbox = None
    if settings.internal_callback_secret is not None:
        outbox = CallbackOutbox(settings, store.callbacks)
        outbox.validate()  # a weak secret stops the start, not the first callback
        stack.push_async_callback(outbox.aclose)
    builds = BuildService(settings, store.builds, provider, sandboxes, sessions, repo_images, outbox, leases)
    stack.push_async_callback(builds.aclose)
    processes = ProcessService(settings, provider, sandboxes.running)
    stack.push_async_callback(processes.aclose)
    signer = PreviewSigner(api_secrets)
    previews = PreviewService(settings, store.previews, signer, provider, sandboxes.running, sandboxes.get)
    sandboxes.halt_listeners.append(previews.forget_sandbox)
    upstreams = Upstreams(provider)
    stack.push_async_callback(upstreams.aclose)
    return Services(
        settings=settings,
        metrics=metrics,
        store=store,
        provider=provider,
        blobs=blobs,
        sandboxes=sandboxes,
        files=FileService(sandboxes, provider),
        reconciler=Reconciler(
            store.sandboxes,
            provider,
            busy=sandboxes.is_creating,
            delete=sandboxes.delete,
            live_replicas=leases.live_replica_ids,
            grace_seconds=settings.reconcile_grace_seconds,
            adopted_ttl_seconds=settings.default_ttl_seconds or settings.adopted_ttl_seconds,
        ),
        snapshots=snapshots,
        snapshot_recovery=SnapshotRecovery(
            store.snapshots,
            blobs,
            replica_id=replica_id,
            writing=snapshots.is_writing,
            live_replicas=leases.live_replica_ids,
            grace_seconds=settings.reconcile_grace_seconds,
        ),
        sessions=sessions,
        pools=pools,
        repo_images=repo_images,
        builds=builds,
        launcher=SandboxLauncher(sandboxes, snapshots, sessions, pools, repo_images),
        callbacks=outbox,
        processes=processes,
        previews=previews,
        preview_upstreams=upstreams,
        file_tree=FileTree(sandboxes, provider),
        daytona_sandboxes=DaytonaSandboxes(sandboxes, snapshots, store.sandboxes),
        daytona_sessions=DaytonaSessions(processes, provider, sandboxes.running),
        leases=leases,
        idempotency=IdempotencyService(store.idempotency, replica_id=replica_id, live_replicas=leases.live_replica_ids),
    )


async def start_background(services: Services, stack: AsyncExitStack) -> None:
    """Join the replicas, reconcile, then start the pool maintainer, the callback worker, builds and the periodic jobs.

    Every duty runs under a lease (``app.services.leases``); the keeper closes
    last, handing the leases back once the duties have stopped.
    """
    settings, leases = services.settings, services.leases
    await leases.start()
    stack.push_async_callback(leases.aclose)

    async def reconcile_all() -> dict[str, int]:
        counts = await services.reconciler.reconcile()
        return counts | await services.snapshot_recovery.recover()

    reconcile = Periodic("reconcile", settings.reconcile_interval_seconds, reconcile_all, leases=leases)
    counts = await reconcile.run_once()
    log.info("service.started", provider=settings.provider, reconciled=counts)
    # After the reconciler, so the first pass sees the provider's truth about members.
    services.pools.maintainer.start()
    stack.push_async_callback(services.pools.maintainer.aclose)
    if services.callbacks is not None:
        services.callbacks.start()  # callbacks due while the service was down go out now
    await services.builds.resume()
    for job in (
        Periodic("reap", settings.reaper_interval_seconds, services.reconciler.reap_expired, leases=leases),
        Periodic("idempotency-keys", 3600, services.idempotency.expire, leases=leases),
        Periodic("previews", 600, services.previews.expire, leases=leases),
        Periodic(
            "snapshot-gc",
            settings.snapshot_gc_interval_seconds,
            ChunkCollector(
                services.blobs, services.store.chunks, grace_seconds=settings.snapshot_gc_grace_seconds
            ).collect,
            leases=leases,
        ),
        reconcile,
        # Every replica looks for builds whose runner died (each build is leased on its own).
        Periodic("builds", settings.lease_ttl_seconds, services.builds.resume),
    ):
        job.start()
        stack.push_async_callback(job.aclose)
    if services.provider.capabilities.exit_events:
        exits = ExitWatcher(services.store.sandboxes, services.provider, busy=services.sandboxes.is_creating)
        job = Periodic("exits", 5.0, exits.run, leases=leases, first_run_now=True)
        job.start()
        stack.push_async_callback(job.aclose)


def startup_error(exc: BaseException) -> str:
    """What went wrong at start, in one line (our errors carry their remedy in the message)."""
    if isinstance(exc, SandboxControlError | ConfigError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return f"{type(exc).__name__}: {exc}"


def lifespan(
    settings: Settings, metrics: Metrics, api_secrets: list[bytes]
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan of an app serving ``settings``: services on ``app.state.services`` while it runs."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        replica_id = settings.replica_id or new_replica_id()
        configure_logging(settings.log_level, known_secrets(settings, api_secrets), replica=replica_id)
        metrics.replica.labels(replica=replica_id).set(1)
        if settings.loop_debug_slow_ms:
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = settings.loop_debug_slow_ms / 1000
        async with AsyncExitStack() as stack:
            try:
                app.state.services = await build_services(settings, metrics, stack, replica_id, api_secrets)
                await start_background(app.state.services, stack)
            except Exception as exc:
                # One line an operator can act on; the traceback only for those who ask for it.
                log.error("service.start_failed", error=startup_error(exc))
                log.debug("service.start_failed_trace", exc_info=exc)
                raise
            yield
            log.info("service.stopping")

    return run
