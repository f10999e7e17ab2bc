"""The one exception the SDK raises."""

from __future__ import annotations

from typing import Any


class RunyardError(Exception):
    """An API call failed.

    ``status`` is the HTTP status the server answered (``404``, ``403``, …) and
    ``error_message`` its ``{"error_message": …}`` text. ``status`` is ``0`` when there was no
    HTTP answer to report: the server could not be reached, a wait timed out, or an event stream
    was lost for good.
    """

    def __init__(self, status: int, error_message: str, *, body: Any = None) -> None:
        super().__init__(f"{status}: {error_message}" if status else error_message)
        self.status = status
        self.error_message = error_message
        self.body = body

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (keyword-only body)
        return (_rebuild, (self.status, self.error_message, self.body))


def _rebuild(status: int, error_message: str, body: Any) -> RunyardError:
    return RunyardError(status, error_message, body=body)
