"""The ``kubernetes`` provider (extra ``[kubernetes]``): sandboxes as pods with a workspace PVC."""

from app.providers.kubernetes.provider import KubernetesProvider

__all__ = ["KubernetesProvider"]
