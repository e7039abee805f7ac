"""Which values in a sandbox's environment are secrets (tokens, keys, passwords).

Read from the sandbox itself, so the answer holds after a service restart
and covers whatever the caller passed in: snapshots refuse archives holding
them, build logs mask them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from app.providers.base import ExecResult

#: Env var names whose values count as secrets.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
#: Shorter values would mask ordinary words.
MIN_SECRET_LEN = 8


async def sandbox_secret_values(exec_: Callable[..., Awaitable[ExecResult]], ref: str) -> list[str]:
    """Values of secret-looking variables in the sandbox's environment (e.g. the clone token).

    ``exec_`` is the provider's ``exec``.
    """
    result = await exec_(ref, ["env", "-0"], timeout=30)
    values = []
    for entry in result.stdout.split(b"\0"):
        name, eq, value = entry.decode(errors="replace").partition("=")
        if eq and SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN:
            values.append(value)
    return values
