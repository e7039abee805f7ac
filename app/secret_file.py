"""Where the API secret comes from without loading the settings: the environment, else the data dir's file.

``sandboxctl`` reads the secret on every command; importing the full settings
(pydantic-settings) for that costs more than the rest of a command. This
module is the one place both the settings and the CLI resolve it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: File under the data dir holding the secret ``sandboxctl serve`` generates.
SECRET_FILE_NAME = "api-secret"
#: Environment names of the shared secret(s), in order of precedence (comma-separated values).
SECRET_ENV_NAMES = ("SANDBOX_API_SECRET", "DAYTONA_API_SECRET", "MODAL_API_SECRET")
DEFAULT_DATA_DIR = ".sandbox-control"


def data_dir_from_env(env: Mapping[str, str]) -> Path:
    """``SANDBOX_DATA_DIR``, else the default (``./.sandbox-control``)."""
    return Path(env.get("SANDBOX_DATA_DIR") or DEFAULT_DATA_DIR)


def read_secret_file(path: Path) -> list[bytes]:
    """The comma-separated secrets in ``path``; none when it does not exist."""
    if not path.is_file():
        return []
    return [value.strip().encode() for value in path.read_text().split(",") if value.strip()]


def resolve_secrets(env: Mapping[str, str], data_dir: Path) -> list[bytes]:
    """The API secrets: the first secret variable set in ``env``, else the data dir's file."""
    for name in SECRET_ENV_NAMES:
        values = [part.strip().encode() for part in env.get(name, "").split(",") if part.strip()]
        if values:
            return values
    return read_secret_file(data_dir / SECRET_FILE_NAME)
