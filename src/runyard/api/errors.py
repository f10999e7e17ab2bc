"""Every error leaves as ``{"error_message": "…"}`` with a fitting status, never a traceback."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runyard.api.boundary import allowed_methods
from runyard.domain.errors import RunyardError, Unauthorized
from runyard.logging import get_logger
from runyard.schemas.errors import describe_errors

log = get_logger("runyard.api")


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error_message": message}, status_code=status_code, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable line per problem, e.g. ``per_page: must be <= 100``."""
    return describe_errors(exc.errors())


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RunyardError)
    async def _runyard(_request: Request, exc: RunyardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else exc.headers
        return error_response(exc.status_code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, describe_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: "resource not found", 405: "method not allowed"}
        detail: Any = exc.detail
        message = (
            messages.get(exc.status_code)
            if detail in (None, "Not Found", "Method Not Allowed")
            else None
        )
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            # Every method the path has, not only those of the route Starlette tried first.
            allowed = allowed_methods(request.app, request.scope)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        return error_response(exc.status_code, message or str(detail), headers or None)

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity_conflict", error=type(exc.orig).__name__)
        return error_response(409, "conflicts with an existing resource")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        return error_response(500, "internal server error")
