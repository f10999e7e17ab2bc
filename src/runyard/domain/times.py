"""How Runyard writes a moment: ISO 8601 in UTC with ``Z`` (``2026-11-28T17:23:34.640555Z``)."""

from __future__ import annotations

from datetime import datetime


def iso(moment: datetime) -> str:
    """``moment`` (aware, UTC) as the API, events and frames write it."""
    return moment.isoformat().replace("+00:00", "Z")
