"""``create_app(settings)``: everything is built in the lifespan; no module globals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from app.api import compat, health
from app.api.errors import install_error_handlers
from app.api.middleware import AuthMiddleware, RequestContextMiddleware
from app.api.v1 import builds, pools, sandboxes, snapshots
from app.auth import RequestVerifier
from app.logging import configure_logging, get_logger
from app.metrics import Metrics
from app.providers.instrumented import InstrumentedProvider
from app.providers.registry import create_provider
from app.services.background import Periodic
from app.services.builds import BuildService
from app.services.callbacks import CallbackOutbox
from app.services.container import Services
from app.services.pools import PoolService
from app.services.repo_images import RepoImageService
from app.services.sandboxes import SandboxService
from app.services.sessions import SessionService, github_tokens_from
from app.services.snapshots import SnapshotService
from app.settings import Settings
from app.storage.blobs import create_blob_store
from app.storage.state import StateStore

log = get_logger("app")


def _known_secrets(settings: Settings, api_secrets: list[bytes]) -> list[str]:
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


def create_app(settings: Settings) -> FastAPI:
    """Build the service. Raises ``ConfigError`` for a configuration that cannot work."""
    api_secrets = settings.validate_secrets()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, _known_secrets(settings, api_secrets))
        if settings.loop_debug_slow_ms:
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = settings.loop_debug_slow_ms / 1000
        async with AsyncExitStack() as stack:
            store = StateStore(settings.effective_state_url)
            await store.open()
            stack.push_async_callback(store.aclose)
            provider = InstrumentedProvider(create_provider(settings.provider, settings), metrics)
            await provider.aopen()
            stack.push_async_callback(provider.aclose)
            blobs = create_blob_store(settings)
            await blobs.open()
            stack.push_async_callback(blobs.aclose)
            sandbox_service = SandboxService(settings, store, provider)
            snapshot_service = SnapshotService(settings, store, blobs, provider, sandbox_service)
            tokens = github_tokens_from(settings)
            if tokens is not None:
                stack.push_async_callback(tokens.aclose)
            repo_images = RepoImageService(store, provider, sandbox_service, snapshot_service)
            session_service = SessionService(settings, sandbox_service, snapshot_service, provider, tokens, repo_images)
            pool_service = PoolService(settings, store, sandbox_service, session_service, provider)
            outbox = None
            if settings.internal_callback_secret is not None:
                outbox = CallbackOutbox(settings, store)
                outbox.validate()  # a weak secret stops the start, not the first callback
                stack.push_async_callback(outbox.aclose)
            build_service = BuildService(
                settings, store, provider, sandbox_service, session_service, repo_images, outbox
            )
            stack.push_async_callback(build_service.aclose)
            app.state.services = Services(
                settings=settings,
                metrics=metrics,
                store=store,
                provider=provider,
                sandboxes=sandbox_service,
                blobs=blobs,
                snapshots=snapshot_service,
                sessions=session_service,
                pools=pool_service,
                repo_images=repo_images,
                builds=build_service,
                callbacks=outbox,
            )
            counts = await sandbox_service.reconcile()
            log.info("service.started", provider=settings.provider, reconciled=counts)
            # After the reconciler, so the first pass sees the provider's truth about members.
            pool_service.maintainer.start()
            stack.push_async_callback(pool_service.maintainer.aclose)
            if outbox is not None:
                outbox.start()  # callbacks due while the service was down go out now
            await build_service.resume()
            for job in (
                Periodic("reap", settings.reaper_interval_seconds, sandbox_service.reap_expired),
                Periodic("reconcile", settings.reconcile_interval_seconds, sandbox_service.reconcile),
            ):
                job.start()
                stack.push_async_callback(job.aclose)
            yield
            log.info("service.stopping")

    app = FastAPI(title="Sandbox Control", version="0.1.0", lifespan=lifespan, docs_url="/docs")
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sandboxes.router)
    app.include_router(snapshots.router)
    app.include_router(pools.router)
    app.include_router(builds.router)
    app.include_router(compat.router)
    verifier = RequestVerifier(api_secrets, settings.auth_skew_seconds, settings.auth_mode)
    # Added last = outermost: context wraps auth so rejected requests are logged and counted.
    app.add_middleware(
        AuthMiddleware,
        verifier=verifier,
        max_json_bytes=settings.max_json_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
