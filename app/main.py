"""``create_app(settings)``: the routers and the middleware; the services are built in ``app.wiring``."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import compat, daytona, health
from app.api.daytona.auth import DaytonaAuthMiddleware, check_keys
from app.api.errors import install_error_handlers
from app.api.middleware import AuthMiddleware, RequestContextMiddleware
from app.api.openapi import install_openapi
from app.api.previews.gateway import PreviewGateway
from app.api.v1 import builds, pools, previews, processes, pty, replicas, sandboxes, snapshots
from app.auth import RequestVerifier
from app.metrics import Metrics
from app.settings import Settings
from app.wiring import lifespan


def create_app(settings: Settings) -> FastAPI:
    """Build the service. Raises ``ConfigError`` for a configuration that cannot work."""
    api_secrets = settings.validate_secrets()
    metrics = Metrics()
    app = FastAPI(
        title="Sandbox Control", version="0.1.0", lifespan=lifespan(settings, metrics, api_secrets), docs_url="/docs"
    )
    app.state.compat_ignored_fields = compat.IgnoredFields()
    install_error_handlers(app)
    for module in (health, sandboxes, processes, pty, previews, snapshots, pools, builds, replicas, compat):
        app.include_router(module.router)
    for router in daytona.ROUTERS:
        app.include_router(router)
    install_openapi(app)
    verifier = RequestVerifier(api_secrets, settings.auth_skew_seconds, settings.auth_mode)
    # Added last = outermost: context wraps auth so rejected requests are logged and counted.
    app.add_middleware(
        AuthMiddleware,
        verifier=verifier,
        max_json_bytes=settings.max_json_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    daytona_keys = [key.get_secret_value().encode() for key in settings.daytona_api_keys]
    app.add_middleware(
        DaytonaAuthMiddleware,
        keys=check_keys(daytona_keys, api_secrets),
        max_json_bytes=settings.max_json_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    # Preview requests carry a preview token, not API credentials: served before either auth
    # (a preview host's every path, /daytona/ included, belongs to the proxy).
    app.add_middleware(
        PreviewGateway,
        domain=settings.preview_domain,
        cookie_secure=settings.preview_cookie_secure,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
