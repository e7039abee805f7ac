"""The one place where errors become HTTP answers.

Every answer has the envelope ``{"success": false, "error": <readable>,
"code": <machine code>}``; unexpected exceptions become a 500 with code
``internal`` and no stack trace, in ``RequestContextMiddleware`` (the trace goes
to the log with the request id).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import SandboxControlError
from app.logging import get_logger

log = get_logger("api")

_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_body(message: str, code: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message, "code": code}
    if details:
        body["details"] = details
    return body


def error_payload(exc: SandboxControlError) -> dict[str, Any]:
    """The envelope of one of our errors, with its JSON-safe details."""
    safe = {k: v for k, v in exc.details.items() if isinstance(v, str | int | float | bool | list) or v is None}
    return error_body(exc.message, exc.code, **safe)


def error_response(exc: SandboxControlError) -> JSONResponse:
    return JSONResponse(error_payload(exc), status_code=exc.status_code)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append({"field": location or "body", "message": err.get("msg", "invalid")})
    text = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
    return f"invalid request: {text}", problems


#: Paths of the Open-Inspect compatible API, whose invalid input is a 400 in the reference's words.
COMPAT_PREFIX = "/api/"
_TYPE_WORDS = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "bool_type": "must be a boolean",
    "float_type": "must be a number",
}


def compat_message(exc: RequestValidationError) -> str:
    """The first problem, worded as the reference service words it (``snapshot_image_id is required``)."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    location = [str(part) for part in err.get("loc", ()) if part != "body"]
    field = ".".join(location)
    kind = str(err.get("type", ""))
    if not field or kind == "json_invalid":
        return "request body must be a JSON object"
    if kind in ("missing", "string_too_short"):
        return f"{field} is required"
    if kind == "value_error":
        return str(err.get("msg", "")).removeprefix("Value error, ")
    if kind in _TYPE_WORDS:
        return f"{field} {_TYPE_WORDS[kind]}"
    return f"{field} has an invalid value: {err.get('msg', 'invalid')}"


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API serves at ``path``, read from its OpenAPI document.

    Starlette's own 405 names only the methods of the first route that matched.
    """
    methods: set[str] = set()
    for template, item in app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/}]+\\}", "[^/]+", re.escape(template)), path):
            methods |= {method.upper() for method in item if method in _HTTP_METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Map our exceptions, validation errors and framework HTTP errors to the envelope."""

    async def on_ours(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SandboxControlError)
        if exc.status_code >= 500:
            log.warning("request.failed", code=exc.code, error=exc.message)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith(COMPAT_PREFIX):
            return JSONResponse(error_body(compat_message(exc), "bad_request"), status_code=400)
        message, problems = _validation_message(exc)
        return JSONResponse(error_body(message, "validation_error", problems=problems), status_code=422)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            allowed = allowed_methods(app, request.url.path)
            return JSONResponse(
                error_body(f"method {request.method} not allowed; use {', '.join(allowed)}", "method_not_allowed"),
                status_code=405,
                headers={"Allow": ", ".join(allowed)},
            )
        if isinstance(exc.__cause__, SandboxControlError):
            # FastAPI wraps anything raised while it reads the body (our size limit on a
            # chunked body among them) in a 400 "error parsing the body": answer ours.
            return error_response(exc.__cause__)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(str(exc.detail), code), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(SandboxControlError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
