"""The per-provider sub-configs of ``Settings`` (``settings.local``, ``settings.docker``, ...).

Each is handed to its provider alone and reads its own environment
variables; ``app.settings`` holds the core knobs and composes these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ProviderSettings(BaseSettings):
    """Base of the per-provider sub-configs; environment names in ``validation_alias``."""

    # As ``Settings``: an empty ``NAME=`` means "unset"; a keyword that names no field is a mistake.
    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True, env_ignore_empty=True)


class LocalSettings(ProviderSettings):
    """The ``local`` (bubblewrap) provider."""

    bwrap: str = Field(default="bwrap", validation_alias="SANDBOX_LOCAL_BWRAP")
    #: A root filesystem directory to use instead of the host's system dirs.
    rootfs: Path | None = Field(default=None, validation_alias="SANDBOX_LOCAL_ROOTFS")
    #: First host uid of the range sandboxes run as when the service is root.
    uid_base: int = Field(default=200_000, ge=1000, validation_alias="SANDBOX_LOCAL_UID_BASE")
    uid_count: int = Field(default=10_000, ge=1, validation_alias="SANDBOX_LOCAL_UID_COUNT")
    #: Bind the in-sandbox runtime (and OpenCode, when installed) read-only into local sandboxes.
    runtime: bool = Field(default=True, validation_alias="SANDBOX_LOCAL_RUNTIME")
    #: A node_modules directory holding the opencode-ai package (default: where
    #: scripts/install-opencode.sh installs it).
    opencode_dir: Path | None = Field(default=None, validation_alias="SANDBOX_LOCAL_OPENCODE_DIR")


class DockerSettings(ProviderSettings):
    """The ``docker`` provider (extra ``[docker]``)."""

    #: Network of sandboxes that name none: ``host``, ``none`` or a named network; unset = the Engine's default.
    network: str | None = Field(default=None, validation_alias="SANDBOX_DOCKER_NETWORK")
    #: When images are pulled: ``never`` (a missing image is a 422), ``missing`` or ``always``.
    pull: Literal["never", "missing", "always"] = Field(default="never", validation_alias="SANDBOX_DOCKER_PULL")


class DaytonaSettings(ProviderSettings):
    """The ``daytona`` provider (extra ``[daytona]``)."""

    api_url: str | None = Field(default=None, validation_alias="DAYTONA_API_URL")
    api_key: SecretStr | None = Field(default=None, validation_alias="DAYTONA_API_KEY")
    target: str | None = Field(default=None, validation_alias="DAYTONA_TARGET")


class ModalSettings(ProviderSettings):
    """The ``modal`` provider (extra ``[modal]``)."""

    token_id: SecretStr | None = Field(default=None, validation_alias="MODAL_TOKEN_ID")
    token_secret: SecretStr | None = Field(default=None, validation_alias="MODAL_TOKEN_SECRET")
    app_name: str = Field(default="sandbox-control", validation_alias="MODAL_APP_NAME")
    environment: str | None = Field(default=None, validation_alias="MODAL_ENVIRONMENT")
    #: Idle timeout of Modal sandboxes (seconds); unset = none.
    idle_timeout_seconds: int | None = Field(default=None, ge=1, validation_alias="MODAL_IDLE_TIMEOUT")
    #: Ports of Modal sandboxes exposed through tunnels (e.g. the env server's).
    tunnel_ports: Annotated[list[int], NoDecode] = Field(default_factory=list, validation_alias="MODAL_TUNNEL_PORTS")

    @field_validator("tunnel_ports", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)


#: A Kubernetes resource quantity (e.g. ``10Gi``, ``500M``), as the API accepts it.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


class KubernetesSettings(ProviderSettings):
    """The ``kubernetes`` provider (extra ``[kubernetes]``): the cluster, and what every sandbox pod looks like."""

    #: Kubeconfig file(s), ``:``-separated as kubectl reads them. Unset (and
    #: ``SANDBOX_K8S_IN_CLUSTER`` not false) inside a pod: the pod's service account.
    kubeconfig: str | None = Field(default=None, validation_alias="KUBECONFIG")
    #: The kubeconfig context to use; default: its ``current-context``.
    context: str | None = Field(default=None, validation_alias="SANDBOX_K8S_CONTEXT")
    #: True: always the in-cluster service account; False: never; unset: in-cluster
    #: when no kubeconfig is set and ``KUBERNETES_SERVICE_HOST`` is.
    in_cluster: bool | None = Field(default=None, validation_alias="SANDBOX_K8S_IN_CLUSTER")
    #: The one namespace sandbox pods, PVCs and network policies live in.
    namespace: str = Field(
        default="sandbox-control",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        validation_alias="SANDBOX_K8S_NAMESPACE",
    )
    #: Image of sandbox pods when the request names none; default SANDBOX_BASE_IMAGE.
    image: str | None = Field(default=None, validation_alias="SANDBOX_K8S_IMAGE")
    #: ``imagePullPolicy`` of sandbox containers; unset = the cluster's default.
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, validation_alias="SANDBOX_K8S_IMAGE_PULL_POLICY"
    )
    #: Names of Secrets (in the namespace) used to pull the image, comma separated.
    image_pull_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="SANDBOX_K8S_IMAGE_PULL_SECRETS"
    )
    #: ``runtimeClassName`` of sandbox pods, e.g. ``gvisor`` or ``kata`` for a stronger boundary.
    runtime_class: str | None = Field(default=None, validation_alias="SANDBOX_K8S_RUNTIME_CLASS")
    #: ``serviceAccountName`` of sandbox pods (its token is never mounted).
    service_account: str | None = Field(default=None, validation_alias="SANDBOX_K8S_SERVICE_ACCOUNT")
    #: Node selector of sandbox pods, a JSON object, e.g. ``{"pool": "sandboxes"}``.
    node_selector: dict[str, str] = Field(default_factory=dict, validation_alias="SANDBOX_K8S_NODE_SELECTOR")
    #: Tolerations of sandbox pods, a JSON list of Kubernetes toleration objects.
    tolerations: list[dict[str, Any]] = Field(default_factory=list, validation_alias="SANDBOX_K8S_TOLERATIONS")
    #: uid sandbox containers run as; unset = the image's USER (Dockerfile.sandbox: 1000).
    run_as_user: int | None = Field(default=None, ge=0, validation_alias="SANDBOX_K8S_RUN_AS_USER")
    #: Group that owns the workspace volume (``fsGroup``), so the sandbox user can write it.
    fs_group: int | None = Field(default=1000, ge=0, validation_alias="SANDBOX_K8S_FS_GROUP")
    #: StorageClass of workspace PVCs; unset = the cluster's default class.
    storage_class: str | None = Field(default=None, validation_alias="SANDBOX_K8S_STORAGE_CLASS")
    #: Size of a workspace PVC when the request has no ``disk_mb``.
    pvc_size: str = Field(default="10Gi", pattern=QUANTITY_PATTERN, validation_alias="SANDBOX_K8S_PVC_SIZE")
    #: Extended resource name that ``resources.gpu`` asks for (one device per sandbox).
    gpu_resource: str = Field(default="nvidia.com/gpu", min_length=1, validation_alias="SANDBOX_K8S_GPU_RESOURCE")
    #: Node label that selects a GPU model when ``resources.gpu`` names one (not "any").
    gpu_type_label: str = Field(
        default="nvidia.com/gpu.product", min_length=1, validation_alias="SANDBOX_K8S_GPU_TYPE_LABEL"
    )
    #: The kubelets' ``podPidsLimit``. Kubernetes has no per-pod process limit, so a
    #: ``resources.pids`` request is refused unless this is set, and then only when
    #: it is at least this value (the effective limit reported is this value).
    pod_pids_limit: int | None = Field(default=None, ge=1, validation_alias="SANDBOX_K8S_POD_PIDS_LIMIT")
    #: Seconds one API request may take (exec streams excepted).
    request_timeout: float = Field(default=30.0, gt=0, validation_alias="SANDBOX_K8S_REQUEST_TIMEOUT")
    #: Attempts per API request (first included) on 429, 5xx and transport errors.
    request_attempts: int = Field(default=4, ge=1, le=20, validation_alias="SANDBOX_K8S_REQUEST_ATTEMPTS")
    #: First retry delay, seconds; doubled per attempt (capped at 4 s), with jitter.
    retry_backoff: float = Field(default=0.25, gt=0, validation_alias="SANDBOX_K8S_RETRY_BACKOFF")
    #: Seconds a new pod may take to be scheduled, pull its image and run.
    start_timeout: float = Field(default=300.0, gt=0, validation_alias="SANDBOX_K8S_START_TIMEOUT")
    #: ``terminationGracePeriodSeconds`` of sandbox pods: SIGTERM to SIGKILL on stop.
    stop_grace_seconds: int = Field(default=10, ge=0, le=3600, validation_alias="SANDBOX_K8S_STOP_GRACE")

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)
