"""Where the cluster is: a kubeconfig (``KUBECONFIG``) or the pod's own service account.

``load_cluster`` reads files and builds a TLS context, so it is blocking:
the provider runs it through ``asyncio.to_thread`` once, in ``aopen``.

Kubeconfig support follows kubectl: ``KUBECONFIG`` may list several files
(``:``-separated; for each name the first file that defines it wins, and the
first ``current-context`` wins); relative paths are relative to the file
that names them. Clusters: ``server``, ``certificate-authority[-data]``,
``insecure-skip-tls-verify``, ``tls-server-name``. Users: ``token``,
``tokenFile``, ``client-certificate[-data]`` + ``client-key[-data]``,
``username``/``password`` and ``exec`` plugins. The legacy ``auth-provider``
(removed from kubectl) is refused with a message naming its replacement.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.errors import ProviderAuthError, ProviderError
from app.provider_settings import KubernetesSettings
from app.providers.kubernetes.credentials import (
    Credentials,
    ExecPlugin,
    NoCredentials,
    StaticToken,
    TokenFile,
)

#: Where a pod finds its service account's token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach and authenticate to one API server."""

    #: Base URL, e.g. ``https://10.0.0.1:6443`` (may carry a path prefix of a proxy).
    server: str
    #: TLS settings (CA, client certificate); ``None`` for a plain ``http://`` server.
    ssl_context: ssl.SSLContext | None
    credentials: Credentials = field(default_factory=NoCredentials)
    #: Name to check the server certificate against instead of the URL's host.
    tls_server_name: str | None = None
    #: Where the configuration came from, for messages (never secrets).
    source: str = ""


def load_cluster(settings: KubernetesSettings, environ: Mapping[str, str] | None = None) -> ClusterConfig:
    """The cluster of ``settings``: kubeconfig, or in-cluster (see ``KubernetesSettings.in_cluster``)."""
    env = os.environ if environ is None else environ
    in_cluster = settings.in_cluster
    if in_cluster is None:
        in_cluster = not settings.kubeconfig and bool(env.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster:
        return load_in_cluster(env)
    paths = [Path(p).expanduser() for p in (settings.kubeconfig or "").split(os.pathsep) if p]
    if not paths:
        default = Path("~/.kube/config").expanduser()
        if not default.is_file():
            raise ProviderError(
                "the kubernetes provider has no cluster: set KUBECONFIG, or run the service in a pod "
                "(its service account is used)"
            )
        paths = [default]
    return load_kubeconfig(paths, settings.context)


def load_in_cluster(environ: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR) -> ClusterConfig:
    """The API server as seen from inside a pod, with the pod's service account."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ProviderError("in-cluster kubernetes config: KUBERNETES_SERVICE_HOST is not set (not in a pod?)")
    token = account_dir / "token"
    if not token.is_file():
        raise ProviderAuthError(f"in-cluster kubernetes config: no service account token at {token}")
    context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
    server_host = f"[{host}]" if ":" in host else host
    return ClusterConfig(
        server=f"https://{server_host}:{port}",
        ssl_context=context,
        credentials=TokenFile(token),
        source="in-cluster service account",
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProviderError(f"cannot read kubeconfig {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ProviderError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProviderError(f"kubeconfig {path} is not a kubeconfig (not a mapping)")
    return data


def _named(entries: Any, kind: str, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for entry in entries or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get(kind), dict):
            yield entry["name"], {**entry[kind], "__dir__": str(path.parent)}


def load_kubeconfig(paths: list[Path], context_name: str | None = None) -> ClusterConfig:
    """Merge kubeconfig ``paths`` as kubectl does and resolve one context."""
    clusters: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    contexts: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for path in paths:
        if not path.is_file():
            continue  # kubectl skips missing files of the list
        data = _read_yaml(path)
        for name, entry in _named(data.get("clusters"), "cluster", path):
            clusters.setdefault(name, entry)
        for name, entry in _named(data.get("users"), "user", path):
            users.setdefault(name, entry)
        for name, entry in _named(data.get("contexts"), "context", path):
            contexts.setdefault(name, entry)
        current = current or data.get("current-context") or None
    source = ":".join(str(p) for p in paths)
    name = context_name or current or ""
    if not name:
        raise ProviderError(f"kubeconfig {source} has no current-context; set SANDBOX_K8S_CONTEXT")
    context = contexts.get(name)
    if context is None:
        raise ProviderError(f"kubeconfig {source} has no context {name!r}")
    cluster = clusters.get(str(context.get("cluster")))
    if cluster is None or not cluster.get("server"):
        raise ProviderError(f"kubeconfig {source}: context {name!r} names no cluster with a server")
    user = users.get(str(context.get("user")), {})
    server = str(cluster["server"]).rstrip("/")
    ssl_context = _ssl_context(cluster, user) if server.startswith("https://") else None
    return ClusterConfig(
        server=server,
        ssl_context=ssl_context,
        credentials=_credentials(user),
        tls_server_name=cluster.get("tls-server-name") or None,
        source=f"kubeconfig {source}, context {name!r}",
    )


def _path(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else Path(entry["__dir__"]) / path)


def _data(entry: Mapping[str, Any], key: str) -> bytes | None:
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError(f"kubeconfig field {key} is not valid base64") from exc


def _ssl_context(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca_file, ca_data = _path(cluster, "certificate-authority"), _data(cluster, "certificate-authority-data")
        if ca_file or ca_data:
            context = ssl.create_default_context(cafile=ca_file, cadata=ca_data.decode() if ca_data else None)
    cert_file, key_file = _path(user, "client-certificate"), _path(user, "client-key")
    cert_data, key_data = _data(user, "client-certificate-data"), _data(user, "client-key-data")
    if cert_data or key_data:
        if not (cert_data and key_data):
            raise ProviderError("kubeconfig user has client-certificate-data without client-key-data (or reverse)")
        with _private_file(cert_data) as cert_path, _private_file(key_data) as key_path:
            context.load_cert_chain(cert_path, key_path)
    elif cert_file or key_file:
        if not (cert_file and key_file):
            raise ProviderError("kubeconfig user has client-certificate without client-key (or reverse)")
        context.load_cert_chain(cert_file, key_file)
    return context


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """``data`` in a 0600 temporary file for ``load_cert_chain`` (which reads only files), removed after."""
    handle, name = tempfile.mkstemp(prefix="sandbox-control-k8s-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _credentials(user: Mapping[str, Any]) -> Credentials:
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?")
        raise ProviderAuthError(
            f"kubeconfig user uses the removed auth-provider {provider!r}: switch to its exec credential plugin "
            "(e.g. gke-gcloud-auth-plugin, kubelogin)"
        )
    if isinstance(user.get("exec"), dict):
        plugin = user["exec"]
        command = str(plugin.get("command") or "")
        if not command:
            raise ProviderError("kubeconfig exec credential plugin has no command")
        if "/" in command and not Path(command).is_absolute():
            command = str(Path(user["__dir__"]) / command)
        env = {str(e["name"]): str(e["value"]) for e in plugin.get("env") or [] if isinstance(e, dict)}
        return ExecPlugin(
            command,
            [str(a) for a in plugin.get("args") or []],
            env,
            api_version=str(plugin.get("apiVersion") or "client.authentication.k8s.io/v1"),
            install_hint=plugin.get("installHint"),
        )
    if user.get("token"):
        return StaticToken(str(user["token"]))
    token_file = _path(user, "tokenFile")
    if token_file:
        return TokenFile(Path(token_file))
    if user.get("username") and user.get("password"):
        return StaticToken(basic=(str(user["username"]), str(user["password"])))
    return NoCredentials()
