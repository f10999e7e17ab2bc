"""Errors that carry a user-facing message and the HTTP status they map to."""

from __future__ import annotations


class RunyardError(Exception):
    """Base of every error meant for the caller. ``message`` goes into ``error_message``."""

    status_code = 400
    #: Response headers the error adds (``Retry-After`` of a 429).
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RunyardError):
    status_code = 400


class Unauthorized(RunyardError):
    status_code = 401


class Forbidden(RunyardError):
    status_code = 403


class NotFound(RunyardError):
    status_code = 404

    def __init__(self, message: str = "resource not found") -> None:
        super().__init__(message)


class Conflict(RunyardError):
    status_code = 409


class Gone(RunyardError):
    status_code = 410


class PreconditionFailed(RunyardError):
    """A conditional request failed (an upload would overwrite an existing object)."""

    status_code = 412


class PayloadTooLarge(RunyardError):
    status_code = 413


class TooManyRequests(RunyardError):
    """Throttled: try again in ``retry_after`` seconds (sent as ``Retry-After``)."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.headers = {"Retry-After": str(self.retry_after)}
