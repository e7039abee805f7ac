"""Entry commands of this service's containers that end on their own, from the Engine's event stream.

``GET /events`` filtered to ``die`` events of our managed (and scoped)
containers streams one JSON object per line as containers end. A die caused by
this provider's own ``stop`` or ``delete`` is not an exit of the entry command:
the provider says which containers it is stopping (``stopping``). The end of the
output comes from the container's log (``logs?tail=``), whose frames carry an
8-byte header per chunk (stdout and stderr multiplexed, no TTY).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.errors import SandboxControlError
from app.providers.base import ExitEvent
from app.providers.docker.engine import EngineClient

#: Lines of the container's log quoted in an exit event.
TAIL_LINES = 30
#: Pause before listening again after the event stream broke (engine restart).
RECONNECT_SECONDS = 1.0


def demux(data: bytes) -> str:
    """The text of a multiplexed log (``[stream, 0, 0, 0, size(4)] + payload`` frames)."""
    out = bytearray()
    offset = 0
    while offset + 8 <= len(data):
        (size,) = struct.unpack(">I", data[offset + 4 : offset + 8])
        out += data[offset + 8 : offset + 8 + size]
        offset += 8 + size
    return out.decode(errors="replace").strip()


async def output_tail(engine: EngineClient, container: str) -> str:
    """The end of the container's output ("" when the Engine cannot say)."""
    params = {"stdout": "1", "stderr": "1", "tail": str(TAIL_LINES)}
    try:
        async with engine.request("GET", f"containers/{container}/logs", params=params, ref=container) as response:
            return demux(await response.read())[-2000:]
    except SandboxControlError:
        return ""


async def watch(engine: EngineClient, labels: list[str], stopping: Callable[[str], bool]) -> AsyncIterator[ExitEvent]:
    """Exit events of containers carrying every label of ``labels``, until cancelled."""
    filters = json.dumps({"type": ["container"], "event": ["die"], "label": labels})
    while True:
        try:
            async with engine.request("GET", "events", params={"filters": filters}) as response:
                async for line in response.content:
                    event = _parse(line)
                    if event is None or stopping(event[0]):
                        continue
                    container, code = event
                    yield ExitEvent(container, code, await output_tail(engine, container))
        except SandboxControlError:
            pass  # the engine went away: listen again once it is back
        await asyncio.sleep(RECONNECT_SECONDS)


def _parse(line: bytes) -> tuple[str, int | None] | None:
    try:
        message: Any = json.loads(line)
    except ValueError:
        return None
    actor = message.get("Actor") or {}
    container = actor.get("ID") or message.get("id")
    if not isinstance(container, str):
        return None
    code = (actor.get("Attributes") or {}).get("exitCode")
    return container, int(code) if isinstance(code, str) and code.lstrip("-").isdigit() else None
