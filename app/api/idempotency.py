"""Running a creating route under its ``Idempotency-Key`` header (the rules: ``app.services.idempotency``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.errors import error_payload
from app.errors import SandboxControlError
from app.services.idempotency import IdempotencyService, Replay

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Set on an answer replayed from the key's first request.
REPLAYED_HEADER = "Idempotent-Replayed"

#: ``run(resource_id, resumed)``: ``resource_id`` is the id to create under when a key is
#: given (None without one); ``resumed`` says a dead replica may have made it already.
Runner = Callable[[str | None, bool], Awaitable[BaseModel]]


async def run_idempotent(
    request: Request,
    service: IdempotencyService,
    *,
    scope: str,
    payload: Any,
    new_id: Callable[[], str],
    run: Runner,
    status_code: int,
) -> JSONResponse:
    """Run the route once per key; a retry with the same key and body gets the same answer."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        result = await run(None, False)
        return JSONResponse(result.model_dump(mode="json"), status_code=status_code)
    outcome = await service.begin(scope, key, payload, new_id)
    if isinstance(outcome, Replay):
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers={REPLAYED_HEADER: "true"})
    try:
        result = await run(outcome.resource_id, outcome.resumed)
    except SandboxControlError as exc:
        await asyncio.shield(service.finish(outcome, exc.status_code, error_payload(exc)))
        raise
    except BaseException:
        await asyncio.shield(service.abandon(outcome))
        raise
    body = result.model_dump(mode="json")
    await service.finish(outcome, status_code, body)
    return JSONResponse(body, status_code=status_code)
