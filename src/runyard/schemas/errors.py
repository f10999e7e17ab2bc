"""Errors on the wire: ``ErrorBody`` (``{"error_message": …}``, the body of every error answer,
a component of the OpenAPI document) and how a request that fails its schema is described in
it: shared by the API and the dashboard, so both say the same thing about the same bad value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One readable line per problem (the first five), e.g. ``per_page: must be <= 100``, from
    pydantic's error list (a request's validation errors)."""
    parts: list[str] = []
    for error in errors[:5]:
        kind = error.get("type", "")
        loc = [p for p in error.get("loc", ()) if p != "body"]
        # ``runs[1].priority``: list indexes as a reader writes them.
        where = "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" if i else str(p) for i, p in enumerate(loc)
        )
        if kind == "json_invalid":
            parts.append("malformed JSON body")
            continue
        if kind == "missing" and not loc:
            parts.append("request body is required")
            continue
        if not loc and kind in ("model_attributes_type", "dict_type"):
            parts.append("request body must be a JSON object (Content-Type: application/json)")
            continue
        message = str(error.get("msg", "invalid value"))
        if where in ("query", "path", "header"):
            where = ""
        for prefix in ("query.", "path.", "header."):
            if where.startswith(prefix):
                where = where[len(prefix) :]
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


class ErrorBody(BaseModel):
    """The body of every error answer (any status from 400 up)."""

    error_message: str = Field(
        description="What went wrong, for a person to read; names the field when one is wrong."
    )
