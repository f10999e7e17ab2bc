"""Every error leaves as ``{"error_message": "…"}`` with a fitting status, never a traceback."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runyard.domain.errors import RunyardError, Unauthorized
from runyard.logging import get_logger

log = get_logger("runyard.api")


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error_message": message}, status_code=status_code, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable line per problem, e.g. ``per_page: must be <= 100``."""
    parts: list[str] = []
    for error in exc.errors()[:5]:
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RunyardError)
    async def _runyard(_request: Request, exc: RunyardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return error_response(exc.status_code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: "resource not found", 405: "method not allowed"}
        detail: Any = exc.detail
        message = (
            messages.get(exc.status_code)
            if detail in (None, "Not Found", "Method Not Allowed")
            else None
        )
        return error_response(
            exc.status_code, message or str(detail), dict(exc.headers) if exc.headers else None
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity_conflict", error=type(exc.orig).__name__)
        return error_response(409, "conflicts with an existing resource")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        return error_response(500, "internal server error")
