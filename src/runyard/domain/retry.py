"""Retry policy for failed attempts: capped exponential backoff with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable

#: First retry waits about this long; each later one twice as long, up to ``BACKOFF_CAP``.
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0
JITTER = 0.2


def backoff_seconds(
    retry_count: int,
    *,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``retry_count`` (1 for the first retry), ±20 % jitter."""
    delay = min(cap, base * float(2 ** max(0, retry_count - 1)))
    return max(0.0, delay * (1 + JITTER * (2 * rand() - 1)))


def should_retry(retry_count: int, max_retries: int, retryable: bool) -> bool:
    """Retry while retries remain, unless the failure would only happen again."""
    return retryable and retry_count < max_retries
