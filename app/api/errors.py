"""The one place where errors become HTTP answers.

Every answer has the envelope ``{"success": false, "error": <readable>,
"code": <machine code>}``; unexpected exceptions become a 500 with code
``internal`` and no stack trace, in ``RequestContextMiddleware`` (the trace goes
to the log with the request id).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from http import HTTPStatus
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


#: Paths of the Daytona-compatible API, answered in Daytona's error shape (``app.api.daytona``).
DAYTONA_PREFIX = "/daytona/"
#: Daytona's status for ours where they differ: its SDK reports refused specs and bad env as 400.
_DAYTONA_STATUS = {"unsupported_spec": 400, "reserved_env_name": 400, "validation_error": 400}
#: Daytona's machine codes (the daemon's ``DaemonErrorCode``) for ours; the SDK raises a precise
#: error for some of them (``FILE_NOT_FOUND`` -> ``DaytonaFileNotFoundError``).
_DAYTONA_CODES = {
    "file_not_found": "FILE_NOT_FOUND",
    "permission_denied": "FILE_ACCESS_DENIED",
    "read_only_path": "FILE_ACCESS_DENIED",
    "process_not_found": "PROCESS_NOT_FOUND",
    "exec_timeout": "PROCESS_EXECUTION_TIMEOUT",
}
_DAYTONA_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    410: "GONE",
    422: "UNPROCESSABLE_ENTITY",
}


def daytona_body(status: int, message: str, *, method: str, path: str, code: str = "") -> dict[str, Any]:
    """Daytona's error body: its API's ``statusCode``/``message``/``error`` plus its daemon's ``code``/``source``.

    The SDK reads ``message`` and picks its error class by status (``401`` ->
    ``DaytonaAuthenticationError``, ``404`` -> ``DaytonaNotFoundError``), or by
    ``(source, code)`` for the daemon's precise ones.
    """
    status = _DAYTONA_STATUS.get(code, status)
    return {
        "statusCode": status,
        "message": message,
        "error": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error",
        "code": _DAYTONA_CODES.get(code) or _DAYTONA_STATUS_CODES.get(status, "INTERNAL_SERVER_ERROR"),
        "source": "DAYTONA_DAEMON" if path.startswith(DAYTONA_PREFIX + "toolbox/") else "DAYTONA_API",
        "path": path,
        "method": method,
        "timestamp": datetime.now(UTC).isoformat(),
    }


def daytona_error(status: int, message: str, *, method: str, path: str, code: str = "") -> JSONResponse:
    body = daytona_body(status, message, method=method, path=path, code=code)
    return JSONResponse(body, status_code=body["statusCode"])


def daytona_error_of(exc: SandboxControlError, *, method: str, path: str) -> JSONResponse:
    return daytona_error(exc.status_code, exc.message, method=method, path=path, code=exc.code)


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

    async def on_ours(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SandboxControlError)
        if exc.status_code >= 500:
            log.warning("request.failed", code=exc.code, error=exc.message)
        if request.url.path.startswith(DAYTONA_PREFIX):
            return daytona_error_of(exc, method=request.method, path=request.url.path)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith(DAYTONA_PREFIX):
            message, _problems = _validation_message(exc)
            return daytona_error(400, message, method=request.method, path=request.url.path)
        if request.url.path.startswith(COMPAT_PREFIX):
            return JSONResponse(error_body(compat_message(exc), "bad_request"), status_code=400)
        message, problems = _validation_message(exc)
        return JSONResponse(error_body(message, "validation_error", problems=problems), status_code=422)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(DAYTONA_PREFIX):
            return _daytona_http(request, exc)
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

    def _daytona_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, SandboxControlError):
            return daytona_error_of(exc.__cause__, method=request.method, path=request.url.path)
        operation = f"{request.method} {request.url.path}"
        if exc.status_code in (404, 405):
            # An operation of the Daytona API this service does not serve: named, so the caller sees which.
            message = f"operation {operation} is not supported by this service's Daytona-compatible API"
            return daytona_error(404, message, method=request.method, path=request.url.path)
        return daytona_error(exc.status_code, str(exc.detail), method=request.method, path=request.url.path)

    app.add_exception_handler(SandboxControlError, on_ours)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
