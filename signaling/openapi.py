"""The OpenAPI 3.1 document, generated from the same route table that serves the API."""

from __future__ import annotations

import re
from typing import Any

from signaling.api import ROUTES, Route

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
REFUSALS = {
    "400": "Malformed request",
    "401": "Missing, bad or expired token",
    "403": "Role or identity not allowed",
    "404": "Unknown id",
    "409": "Conflicts with current state",
    "422": "A rule is broken",
}
PUBLIC = [
    ("/healthz", "The process is alive"),
    ("/readyz", "The store answers and directives are loaded (503 otherwise)"),
    ("/metrics", "Prometheus metrics"),
    ("/api/v1/openapi.json", "This document"),
    ("/api/v1/events", "WebSocket of live audit events for staff; first message {type: auth, token, after?}"),
]


def _operation(route: Route) -> dict[str, Any]:
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "tags": list(route.tags),
        "security": [{"bearer": []}],
        "x-roles": list(route.roles),
        "responses": {str(route.status): {"description": "OK"}}
        | {code: {"description": text, **error_ref} for code, text in REFUSALS.items()},
    }
    params = re.findall(r"{(\w+)}", route.path)
    if params:
        operation["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
        ]
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    return operation


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    for path, summary in PUBLIC:
        paths[path] = {"get": {"summary": summary, "security": [], "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parlor", "version": "1", "description": "Video visitation with targeted, audited suspensions."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Error": ERROR},
        },
    }
