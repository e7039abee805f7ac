"""The ``docker`` provider: containers on a Docker Engine (see ``provider``)."""

from app.providers.docker.images import REPO_IMAGE_LABEL
from app.providers.docker.provider import DockerProvider

__all__ = ["REPO_IMAGE_LABEL", "DockerProvider"]
