"""Kubeconfig and in-cluster loading, and the credential sources (tokens, token files, exec plugins)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.errors import ProviderAuthError, ProviderError
from app.provider_settings import KubernetesSettings
from app.providers.kubernetes.config import load_cluster, load_in_cluster, load_kubeconfig
from app.providers.kubernetes.credentials import ExecPlugin, StaticToken, TokenFile, parse_exec_credential


def self_signed() -> tuple[bytes, bytes]:
    """A PEM certificate and its key (a CA and client certificate alike, for loading only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def kubeconfig(
    path: Path, *, cluster: dict[str, Any], user: dict[str, Any], name: str = "c", current: str | None = "c"
) -> Path:
    data: dict[str, Any] = {
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }
    if current:
        data["current-context"] = current
    path.write_text(yaml.safe_dump(data))
    return path


async def test_token_user(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", cluster={"server": "https://k8s.example:6443/"}, user={"token": "t0k"})
    cluster = load_kubeconfig([path])
    assert cluster.server == "https://k8s.example:6443"
    assert isinstance(cluster.ssl_context, ssl.SSLContext)
    assert await cluster.credentials.headers() == {"Authorization": "Bearer t0k"}
    assert "t0k" not in repr(cluster) and "t0k" not in cluster.source


async def test_token_file_is_relative_to_its_kubeconfig_and_reread(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    path = kubeconfig(tmp_path / "config", cluster={"server": "http://127.0.0.1:1"}, user={"tokenFile": "token"})
    cluster = load_kubeconfig([path])
    assert cluster.ssl_context is None
    credentials = cluster.credentials
    assert isinstance(credentials, TokenFile)
    assert await credentials.headers() == {"Authorization": "Bearer first"}
    (tmp_path / "token").write_text("rotated")
    credentials.invalidate()  # what a 401 does
    assert await credentials.headers() == {"Authorization": "Bearer rotated"}


def test_merge_first_file_wins_and_context_choice(tmp_path: Path) -> None:
    first = kubeconfig(
        tmp_path / "a", cluster={"server": "https://a:1"}, user={"token": "a"}, name="shared", current="shared"
    )
    second_data = {
        "clusters": [
            {"name": "shared", "cluster": {"server": "https://b:1"}},
            {"name": "b", "cluster": {"server": "https://only-b:1"}},
        ],
        "users": [{"name": "b", "user": {"token": "b"}}],
        "contexts": [{"name": "b", "context": {"cluster": "b", "user": "b"}}],
        "current-context": "b",
    }
    second = tmp_path / "b"
    second.write_text(yaml.safe_dump(second_data))
    assert load_kubeconfig([first, second]).server == "https://a:1"  # first current-context, first cluster of that name
    assert load_kubeconfig([first, second], "b").server == "https://only-b:1"
    assert load_kubeconfig([tmp_path / "missing", second]).server == "https://only-b:1"
    with pytest.raises(ProviderError, match="no context 'x'"):
        load_kubeconfig([first], "x")
    bare = kubeconfig(tmp_path / "bare", cluster={"server": "https://a:1"}, user={}, current=None)
    with pytest.raises(ProviderError, match="SANDBOX_K8S_CONTEXT"):
        load_kubeconfig([bare])


def test_tls_material(tmp_path: Path) -> None:
    cert, key = self_signed()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    user = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    cluster = {"server": "https://a:1", "certificate-authority-data": b64(cert), "tls-server-name": "api.internal"}
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("sandbox-control-k8s-*"))
    loaded = load_kubeconfig([kubeconfig(tmp_path / "config", cluster=cluster, user=user)])
    assert set(temp.glob("sandbox-control-k8s-*")) == before, "the key's temporary file is removed at once"
    assert loaded.tls_server_name == "api.internal"
    assert loaded.ssl_context is not None and loaded.ssl_context.verify_mode == ssl.CERT_REQUIRED
    insecure = load_kubeconfig(
        [kubeconfig(tmp_path / "i", cluster={"server": "https://a:1", "insecure-skip-tls-verify": True}, user={})]
    )
    assert insecure.ssl_context is not None and insecure.ssl_context.verify_mode == ssl.CERT_NONE
    with pytest.raises(ProviderError, match="client-key"):
        load_kubeconfig(
            [
                kubeconfig(
                    tmp_path / "half", cluster={"server": "https://a:1"}, user={"client-certificate-data": b64(cert)}
                )
            ]
        )


def test_legacy_auth_provider_is_refused_with_its_replacement(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", cluster={"server": "https://a:1"}, user={"auth-provider": {"name": "gcp"}})
    with pytest.raises(ProviderAuthError, match="gke-gcloud-auth-plugin"):
        load_kubeconfig([path])


async def test_exec_plugin_token_is_cached_until_its_expiry(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = tmp_path / "plugin.py"
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    script.write_text(
        "import json, os, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n))\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential'\n"
        "token = 'tok-' + str(n) + os.environ['SUFFIX']\n"
        f"status = {{'token': token, 'expirationTimestamp': {expiry!r}}}\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential', 'status': status}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "env": [{"name": "SUFFIX", "value": "-x"}],
        }
    }
    cluster = load_kubeconfig([kubeconfig(tmp_path / "config", cluster={"server": "https://a:1"}, user=user)])
    assert isinstance(cluster.credentials, ExecPlugin)
    assert await cluster.credentials.headers() == {"Authorization": "Bearer tok-1-x"}
    assert await cluster.credentials.headers() == {"Authorization": "Bearer tok-1-x"}
    cluster.credentials.invalidate()
    assert await cluster.credentials.headers() == {"Authorization": "Bearer tok-2-x"}


async def test_exec_plugin_failures_are_auth_errors(tmp_path: Path) -> None:
    with pytest.raises(ProviderAuthError, match="cannot run"):
        await ExecPlugin(str(tmp_path / "missing-plugin"), install_hint="install it").headers()
    with pytest.raises(ProviderAuthError, match="exit 3"):
        await ExecPlugin(sys.executable, ["-c", "import sys; sys.stderr.write('nope'); sys.exit(3)"]).headers()
    with pytest.raises(ProviderAuthError, match="no token"):
        parse_exec_credential(json.dumps({"status": {"clientCertificateData": "x"}}).encode(), "p")


async def test_in_cluster(tmp_path: Path) -> None:
    cert, _ = self_signed()
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "token").write_text("sa-token")
    cluster = load_in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert cluster.server == "https://[fd00::1]:443"
    assert await cluster.credentials.headers() == {"Authorization": "Bearer sa-token"}
    with pytest.raises(ProviderError):
        load_in_cluster({}, tmp_path)
    with pytest.raises(ProviderAuthError):
        load_in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path / "nowhere")


def test_choice_between_kubeconfig_and_in_cluster(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", cluster={"server": "https://a:1"}, user={"token": "x"})
    settings = KubernetesSettings(kubeconfig=f"{tmp_path / 'none'}:{path}")
    assert load_cluster(settings, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).server == "https://a:1"
    with pytest.raises(ProviderAuthError):  # in-cluster forced, but this is no pod
        load_cluster(KubernetesSettings(kubeconfig=str(path), in_cluster=True), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})


def test_static_token_repr_hides_the_token() -> None:
    assert "secret" not in repr(StaticToken("secret"))
