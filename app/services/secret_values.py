"""Which values in a sandbox's environment are secrets (tokens, keys, passwords).

Read from the sandbox itself, so the answer holds after a service restart
and covers whatever the caller passed in: snapshots refuse archives holding
them, build logs mask them. A claimed warm sandbox got its session's env vars
after it started, in the runtime's session env file (a POSIX shell script):
the environment is read with that file loaded, so they count too, and so does
the env server's password the runtime made inside the sandbox. The env file a
plain pool claim wrote is loaded the same way.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from app.providers.base import ExecResult
from app.services.sandboxes import CLAIM_ENV_FILE
from sandbox_runtime.contract import DEFAULT_RUN_DIR, ENV_SERVER_AUTH_FILE, SESSION_ENV_FILE

#: Env var names whose values count as secrets.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
#: Shorter values would mask ordinary words.
MIN_SECRET_LEN = 8
#: The environment, with the session env file and a plain pool claim's env file loaded and the env
#: server's password when there are (plain ``env -0`` where ``sh`` is missing).
_READ_ENV = (
    f'for f in {DEFAULT_RUN_DIR}/{SESSION_ENV_FILE} {CLAIM_ENV_FILE}; do [ -r "$f" ] && . "$f" >/dev/null 2>&1; done; '
    f'p=$(cat {DEFAULT_RUN_DIR}/{ENV_SERVER_AUTH_FILE} 2>/dev/null) && export SANDBOX_ENV_SERVER_PASSWORD="$p"; '
    "exec env -0"
)


async def sandbox_secret_values(exec_: Callable[..., Awaitable[ExecResult]], ref: str) -> list[str]:
    """Values of secret-looking variables in the sandbox's environment (e.g. the clone token).

    ``exec_`` is the provider's ``exec``.
    """
    result = await exec_(ref, ["sh", "-c", _READ_ENV], timeout=30)
    if result.exit_code != 0:
        result = await exec_(ref, ["env", "-0"], timeout=30)
    values = []
    for entry in result.stdout.split(b"\0"):
        name, eq, value = entry.decode(errors="replace").partition("=")
        if eq and SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN:
            values.append(value)
    return values
