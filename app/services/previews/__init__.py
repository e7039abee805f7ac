"""Preview URLs: tokens, the service that makes and checks previews, and the upstream connections."""

from app.services.previews.http1 import UpstreamError
from app.services.previews.service import PreviewAccess, PreviewService
from app.services.previews.tokens import PreviewSigner
from app.services.previews.upstream import Upstreams

__all__ = ["PreviewAccess", "PreviewService", "PreviewSigner", "UpstreamError", "Upstreams"]
