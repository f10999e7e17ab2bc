"""The error surface in the OpenAPI document: every operation lists the error statuses it can
answer, each with the ``ErrorBody`` schema (``{"error_message": …}``).

FastAPI documents a ``422`` that Runyard never sends (validation errors are ``400``) and no
other error. ``document_errors`` replaces that, once, on the generated document; the statuses
come from what the document already says about each operation, the rules of the API:

- ``400``: every operation under ``/api/v1`` (schema validation, the text rule of
  ``api/boundary.py``, which checks every query parameter and header).
- ``401``, ``403``, ``404``: every authenticated operation (credentials; family, role or
  membership; the team or a resource it names). ``404`` also for every path parameter.
- ``409``: every write (a conflict with an existing resource or the current state).
- ``413``: every request body (``server.max_body_bytes``).
- ``EXTRA``: what only the route's service knows (throttling, expiry, preconditions).
"""

from __future__ import annotations

import json
from typing import Any

from runyard.schemas.errors import ErrorBody

API_PREFIX = "/api/v1"
SCHEMA_NAME = "ErrorBody"
_REF = f"#/components/schemas/{SCHEMA_NAME}"
_WRITES = frozenset({"post", "put", "patch", "delete"})

DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: malformed JSON, a missing field, a wrong type, a value out of range, "
    "or text with a NUL character or an unpaired surrogate",
    401: "Missing, malformed, expired or revoked credentials",
    403: "Not allowed: the wrong credential family, a role too low, not a member of the team",
    404: "Not found (another team's resources are not found either)",
    409: "Conflicts with an existing resource or the current state",
    410: "Gone: expired, or removed by the retention policy",
    412: "Precondition failed: already uploaded or already started",
    413: "Too large: the request body or the file",
    429: "Too many attempts: wait for the seconds in Retry-After",
    503: "Not ready: the database is unavailable or its schema is not current",
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Bearer",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "integer"},
        }
    },
}

#: Statuses only the route's service knows of, by (method, path).
EXTRA: dict[tuple[str, str], frozenset[int]] = {
    ("post", "/api/v1/auth/login"): frozenset({401, 429}),
    # Registration closed, or an invitation that is unknown, expired or for another address.
    ("post", "/api/v1/auth/register"): frozenset({403}),
    ("post", "/api/v1/auth/refresh"): frozenset({401}),
    ("post", "/api/v1/auth/logout"): frozenset({401}),
    ("post", "/api/v1/desktop/pair/poll"): frozenset({404, 410, 429}),
    ("post", "/api/v1/invitations/accept"): frozenset({429}),
    ("put", "/api/v1/users/me/password"): frozenset({429}),
    ("post", "/api/v1/uploads/multipart/initiate"): frozenset({412}),
    ("post", "/api/v1/uploads/multipart/complete"): frozenset({412}),
    ("get", "/api/v1/r/tasks/{taskId}/outputs/{index}"): frozenset({410}),
    # Signed links (local storage): the signature is the credential.
    ("put", "/api/v1/objects/{key}"): frozenset({403, 412, 413}),
    ("get", "/api/v1/objects/{key}"): frozenset({403}),
    ("head", "/api/v1/objects/{key}"): frozenset({403}),
    ("get", "/readyz"): frozenset({503}),
}


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses ``operation`` (``method`` on ``path``) can answer."""
    statuses = set(EXTRA.get((method, path), frozenset()))
    if not path.startswith(API_PREFIX + "/"):
        return statuses
    statuses.add(400)
    if operation.get("security"):
        statuses |= {401, 403, 404}
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        statuses.add(404)
    if method in _WRITES:
        statuses.add(409)
    if "requestBody" in operation:
        statuses.add(413)
    return statuses


def _response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _REF}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Add the error surface to a generated OpenAPI ``document`` (in place) and return it."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas[SCHEMA_NAME] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)  # never sent: validation errors are 400
            for status in sorted(error_statuses(path, method, operation)):
                responses.setdefault(str(status), _response(status))
    # FastAPI's 422 bodies, once nothing refers to them (the first refers to the second).
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and f'"#/components/schemas/{name}"' not in json.dumps(document):
            del schemas[name]
    return document
