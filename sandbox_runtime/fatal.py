"""The fatal-error report: ``POST {CONTROL_PLANE_URL}/sandbox/{SANDBOX_ID}/error``.

Sent once the supervisor gives up (boot failed, a child exceeded its restart budget), with
the sandbox token as bearer, so the control plane learns it at once rather than from a
missing heartbeat. ``SANDBOX_ID`` is the current one: a warm sandbox reports under the id
its claim bound.
"""

from __future__ import annotations

import asyncio

from sandbox_runtime.config import RuntimeConfig
from sandbox_runtime.jsonlog import JsonLogger

_ATTEMPTS = 3


async def report_fatal(config: RuntimeConfig, error: str, log: JsonLogger) -> bool:
    """POST the (already redacted) ``error``; True when the control plane took it (best effort)."""
    if not config.control_plane_url or not config.sandbox_id:
        return False
    import httpx  # only on this rare path: importing it costs every boot ~0.1 s of CPU

    url = f"{config.control_plane_url}/sandbox/{config.sandbox_id}/error"
    headers = {"Authorization": f"Bearer {config.auth_token}"}
    async with httpx.AsyncClient(timeout=10.0) as client:
        for attempt in range(_ATTEMPTS):
            try:
                response = await client.post(url, json={"error": error, "fatal": True}, headers=headers)
                if response.is_success:
                    log.info("fatal.reported", status=response.status_code)
                    return True
                log.warning("fatal.report_refused", status=response.status_code)
                if response.status_code < 500:
                    return False
            except httpx.HTTPError as exc:
                log.warning("fatal.report_failed", error=type(exc).__name__)
            await asyncio.sleep(0.5 * 2**attempt)
    return False
