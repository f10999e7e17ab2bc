"""argon2id password hashing with a constant-time path for unknown accounts."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from runyard.config import AuthSettings


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the email is unknown, so both paths cost the same.
        self._dummy = self._hasher.hash("runyard-dummy-password")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True if ``password`` matches; with ``stored_hash=None`` burns the same time, False."""
        try:
            self._hasher.verify(stored_hash or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored_hash is not None
