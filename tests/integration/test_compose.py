"""docker-compose.yml: validated by the compose tool itself, and its wiring checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import missing_component

ROOT = Path(__file__).resolve().parents[2]
FILLED = {
    "SANDBOX_API_SECRET": "a" * 64,
    "INTERNAL_CALLBACK_SECRET": "b" * 64,
    "S3_ACCESS_KEY": "sandbox-control",
    "S3_SECRET_KEY": "c" * 40,
    "DOCKER_GID": "999",
}


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    missing_component("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    raise AssertionError("unreachable")


def env_file(values: dict[str, str]) -> str:
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key, sep, _ = line.partition("=")
        lines.append(f"{key}={values[key]}" if sep and key in values else line)
    return "\n".join(lines) + "\n"


def run_config(tmp_path: Path, env_text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    files = ["docker-compose.yml", *extra]
    for name in files:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".env").write_text(env_text)
    return subprocess.run(
        [
            *compose_command(),
            "--project-directory",
            str(tmp_path),
            *[arg for name in files for arg in ("-f", str(tmp_path / name))],
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_compose_file_validates(tmp_path: Path) -> None:
    result = run_config(tmp_path, env_file(FILLED))
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"api", "minio", "bucket-init"} <= set(services)
    api = services["api"]
    assert api["environment"]["SANDBOX_PROVIDER"] == "docker"
    assert api["environment"]["S3_ENDPOINT"] == "http://minio:9000"
    assert api["depends_on"]["minio"]["condition"] == "service_healthy"
    assert api["depends_on"]["bucket-init"]["condition"] == "service_completed_successfully"
    assert any("/var/run/docker.sock" in str(volume) for volume in api["volumes"])
    assert "healthcheck" in api and "healthcheck" in services["minio"]
    assert any("minio-data" in str(volume) for volume in services["minio"]["volumes"])
    assert services["bucket-init"]["restart"] == "no"


def test_replicas_override_runs_two_replicas_on_postgres_behind_nginx(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "nginx").mkdir(parents=True)
    shutil.copy(ROOT / "deploy/nginx/sandbox-control.conf", tmp_path / "deploy/nginx/sandbox-control.conf")
    refused = run_config(tmp_path, env_file(FILLED), "docker-compose.replicas.yml")
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr
    result = run_config(
        tmp_path, env_file(FILLED) + "POSTGRES_PASSWORD=" + "p" * 32 + "\n", "docker-compose.replicas.yml"
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"api", "api-2", "postgres", "nginx", "minio", "bucket-init"} <= set(services)
    replicas = [services["api"], services["api-2"]]
    urls = {s["environment"]["SANDBOX_STATE_URL"] for s in replicas}
    assert (
        len(urls) == 1
        and next(iter(urls)).startswith("postgresql://sandbox:")
        and "@postgres:5432/" in next(iter(urls))
    )
    assert [s["environment"]["SANDBOX_REPLICA_ID"] for s in replicas] == ["api-1", "api-2"]
    assert {s["environment"]["S3_BUCKET"] for s in replicas} == {"sandbox-control"}  # one bucket
    for replica in replicas:
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    conf = (ROOT / "deploy/nginx/sandbox-control.conf").read_text()
    assert "server api:8080" in conf and "server api-2:8080" in conf
    assert "proxy_buffering off" in conf and "proxy_request_buffering off" in conf and "Upgrade" in conf


def test_compose_refuses_missing_storage_secrets(tmp_path: Path) -> None:
    result = run_config(tmp_path, env_file({**FILLED, "S3_ACCESS_KEY": ""}))
    assert result.returncode != 0
    assert "S3_ACCESS_KEY" in result.stderr


def test_env_example_documents_every_setting() -> None:
    from pydantic_settings import BaseSettings

    from app.settings import Settings

    documented = (ROOT / ".env.example").read_text()
    # A sub-config (e.g. ``Settings.kubernetes``) has no variable of its own: its fields do.
    groups: list[type[BaseSettings]] = [Settings]
    seen: set[str] = set()
    while groups:
        for name, field in groups.pop().model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
                groups.append(field.annotation)
                continue
            seen.add(name)
            alias = field.validation_alias
            names = [alias] if isinstance(alias, str) else list(getattr(alias, "choices", []) or [name])
            assert any(f"{n}=" in documented for n in names), f"{names} missing from .env.example"
    assert {"uid_base", "pull", "api_key", "token_secret", "namespace"} <= seen  # every sub-config was walked


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.sandbox"])
def test_dockerfiles_start_from_the_local_base_and_never_pull(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["debian:bookworm-slim"]
    assert "--no-install-recommends" in text
    assert "rm -rf /var/lib/apt/lists/*" in text
