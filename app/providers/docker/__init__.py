"""The ``docker`` provider: containers on a Docker Engine (see ``provider``)."""

from app.providers.docker.provider import REPO_IMAGE_LABEL, DockerProvider

__all__ = ["REPO_IMAGE_LABEL", "DockerProvider"]
