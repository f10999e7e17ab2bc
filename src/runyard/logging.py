"""Structured logs: text on a terminal, JSON otherwise (or as configured). Never a secret.

Every record, ours or a library's, passes the ``redact`` processor, which blanks values of
secret-looking keys and masks anything shaped like a Runyard key or a JWT.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from runyard.config import LoggerSettings

_SECRET_KEYS = ("password", "secret", "token", "authorization", "api_key", "raw_key", "cookie")
_SECRET_VALUE = re.compile(
    r"\b(?:sk|ak|dk)-[A-Za-z0-9_\-]{8,}|\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"
    r"|\binv-[A-Za-z0-9_\-]{8,}|\bwhsec_[A-Za-z0-9_\-]{8,}"
)
REDACTED = "[redacted]"


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    for key, value in list(event_dict.items()):
        if any(word in key.lower() for word in _SECRET_KEYS) and key != "event":
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _mask(value)
    return event_dict


def configure_logging(settings: LoggerSettings) -> None:
    level_name = {"warn": "warning"}.get(settings.level, settings.level).upper()
    level = getattr(logging, level_name)
    fmt = settings.format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # Plain tracebacks: rich's pretty ones took up to a second each on a loaded machine,
        # on the server's event loop.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        # Drop events below the level first, before the processors format them (one per
        # request at ``info``: measurable on the submit path when the level is ``warn``).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else _passthrough,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One request line comes from our middleware; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True


def _passthrough(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return event_dict


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
