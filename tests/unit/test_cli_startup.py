"""The CLI starts fast (no server imports) and a failed start is one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("fastapi", "starlette", "sqlalchemy", "pydantic_settings", "uvicorn")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_cli_loads_neither_the_server_nor_the_http_client() -> None:
    loaded = _modules_after("import app.cli")
    assert not loaded & {*HEAVY, "httpx", "pydantic", "asyncio"}


def test_the_exec_command_needs_neither_httpx_nor_asyncio() -> None:
    # `sandboxctl exec` runs on the standard-library transport: what it imports when it runs.
    loaded = _modules_after("import app.cli, app.cli_http, app.client_events")
    assert not loaded & {*HEAVY, "httpx", "pydantic", "asyncio"}


def test_the_client_does_not_import_the_server() -> None:
    loaded = _modules_after("import app.client")
    assert not loaded & set(HEAVY)


def test_token_needs_no_settings_and_reads_the_data_dir_secret(tmp_path: Path) -> None:
    (tmp_path / "api-secret").write_text("s" * 64 + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "DAYTONA_", "MODAL_"))}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "--data-dir", str(tmp_path), "token"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    ms, _, sig = out.stdout.strip().partition(".")
    assert ms.isdigit() and len(sig) == 64
    missing = subprocess.run(
        [sys.executable, "-m", "app.cli", "--data-dir", str(tmp_path / "none"), "token"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "no API secret" in missing.stderr


def test_a_failed_start_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_", "S3_"))}
    # A state store URL that cannot be opened: the start fails before anything serves.
    env.update(
        SANDBOX_API_SECRET="k" * 64,
        SANDBOX_DATA_DIR=str(tmp_path / "data"),
        SANDBOX_STATE_URL="postgresql://nobody@127.0.0.1:9/none",
        SANDBOX_PROVIDER="local",
        SANDBOX_PORT="9",
    )
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    failed = [line for line in run.stderr.splitlines() if "service.start_failed" in line]
    assert len(failed) == 1 and "127.0.0.1" in failed[0]
