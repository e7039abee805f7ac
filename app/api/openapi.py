"""The OpenAPI document as the service really answers: every error, both auth schemes, links between operations.

FastAPI documents the success answer and its own 422 model. This completes
the document once, for every route (new routers included without doing
anything): the error statuses with the one error envelope we send, the two
security schemes (public endpoints marked as such), the 400 the compat
endpoints answer instead of 422, and the links a client (or a stateful
fuzzer) follows from what a create returns to what it can do next.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.errors import COMPAT_PREFIX
from app.api.middleware import PUBLIC_PATHS
from app.schemas.common import ErrorBody

#: Error statuses every authenticated operation may answer, with what they mean.
ERROR_STATUSES = {
    "400": "Bad request: the input asks for something invalid (machine code in `code`)",
    "401": "Missing, malformed, expired or wrong credentials",
    "403": "Forbidden (e.g. a sandbox path its user may not touch)",
    "404": "Not found",
    "405": "Method not allowed (the `Allow` header lists the methods)",
    "409": "Conflict with the resource's state",
    "413": "Payload too large",
    "422": "Validation error (unknown field, wrong type) or a provider that cannot honour a field",
    "500": "Internal error (never with a stack trace)",
    "502": "The provider failed",
    "503": "The provider or the storage is unavailable; retry later",
}
#: (path, method, status) of a create -> the operations its answer leads to: (link name, path, method, parameter).
LINKS: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {
    ("/v1/sandboxes", "post", "201"): [
        ("GetSandbox", "/v1/sandboxes/{sandbox_id}", "get", "sandbox_id"),
        ("ExecInSandbox", "/v1/sandboxes/{sandbox_id}/exec", "post", "sandbox_id"),
        ("SnapshotSandbox", "/v1/sandboxes/{sandbox_id}/snapshots", "post", "sandbox_id"),
        ("StopSandbox", "/v1/sandboxes/{sandbox_id}/stop", "post", "sandbox_id"),
        ("DeleteSandbox", "/v1/sandboxes/{sandbox_id}", "delete", "sandbox_id"),
    ],
    ("/v1/sandboxes/{sandbox_id}/snapshots", "post", "201"): [
        ("GetSnapshot", "/v1/snapshots/{snapshot_id}", "get", "snapshot_id"),
        ("RestoreSnapshot", "/v1/snapshots/{snapshot_id}/restore", "post", "snapshot_id"),
        ("DeleteSnapshot", "/v1/snapshots/{snapshot_id}", "delete", "snapshot_id"),
    ],
    ("/v1/snapshots/{snapshot_id}/restore", "post", "201"): [
        ("GetRestoredSandbox", "/v1/sandboxes/{sandbox_id}", "get", "sandbox_id"),
        ("DeleteRestoredSandbox", "/v1/sandboxes/{sandbox_id}", "delete", "sandbox_id"),
    ],
    ("/v1/builds", "post", "202"): [
        ("GetBuild", "/v1/builds/{build_id}", "get", "build_id"),
        ("CancelBuild", "/v1/builds/{build_id}/cancel", "post", "build_id"),
    ],
}
_LINK_SOURCE = {
    "sandbox_id": "$response.body#/id",
    "snapshot_id": "$response.body#/id",
    "build_id": "$response.body#/id",
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Add error answers, security and links to a generated document (in place; returned)."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["schemas"].pop("HTTPValidationError", None)
    components["schemas"].pop("ValidationError", None)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "<unix ms>.<hex HMAC-SHA256 of the ms text, keyed with the shared secret>",
        },
        "signature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Sandbox-Signature",
            "description": "t=<ms>,v1=<hex HMAC-SHA256 of ms, method, path?query and the body's sha256>",
        },
    }
    spec["security"] = [{"bearer": []}, {"signature": []}]
    operation_ids: dict[tuple[str, str], str] = {}
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation_ids[(path, method)] = operation.get("operationId", "")
            responses = operation["responses"]
            if path in PUBLIC_PATHS:
                operation["security"] = []
                continue
            for status, description in ERROR_STATUSES.items():
                if path.startswith(COMPAT_PREFIX) and status == "422":
                    # The compat endpoints answer invalid input with 400, in the reference's words.
                    responses.pop("422", None)
                    continue
                responses[status] = _error_response(description)
    for (path, method, status), links in LINKS.items():
        response = spec.get("paths", {}).get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        response["links"] = {
            name: {"operationId": operation_ids[(target, verb)], "parameters": {param: _LINK_SOURCE}}
            for name, target, verb, param in links
            if (target, verb) in operation_ids
        }
    return spec


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
            app.openapi_schema = complete_openapi(spec)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
