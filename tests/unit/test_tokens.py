from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runyard.config import AuthSettings
from runyard.domain.errors import Unauthorized
from runyard.security.passwords import Passwords
from runyard.security.tokens import TokenSigner

SECRET = "s" * 48


def test_tokens_round_trip_and_keep_their_type() -> None:
    signer = TokenSigner(SECRET)
    now = datetime.now(UTC)
    token = signer.issue("user-1", "access", "jti-1", now, 60)
    claims = signer.verify(token, "access", now)
    assert (claims.user_id, claims.token_id) == ("user-1", "jti-1")
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        signer.verify(token, "refresh", now)


def test_access_tokens_name_their_sign_in() -> None:
    signer = TokenSigner(SECRET)
    now = datetime.now(UTC)
    token = signer.issue("user-1", "access", "jti-1", now, 60, session_id="family-1")
    assert signer.verify(token, "access", now).session_id == "family-1"
    # A token without one reads as None (the services refuse it).
    assert (
        signer.verify(signer.issue("u", "access", "j", now, 60), "access", now).session_id is None
    )


def test_expired_forged_and_garbage_tokens_are_refused() -> None:
    signer = TokenSigner(SECRET)
    past = datetime.now(UTC) - timedelta(hours=2)
    with pytest.raises(Unauthorized, match="expired"):
        signer.verify(signer.issue("u", "access", "j", past, 60), "access", datetime.now(UTC))
    forged = TokenSigner("x" * 48).issue("u", "access", "j", datetime.now(UTC), 60)
    with pytest.raises(Unauthorized, match="invalid access token"):
        signer.verify(forged, "access", datetime.now(UTC))
    with pytest.raises(Unauthorized):
        signer.verify("not-a-jwt", "access", datetime.now(UTC))


def test_passwords_verify_and_unknown_accounts_fail() -> None:
    passwords = Passwords(AuthSettings(argon2_time_cost=1, argon2_memory_cost_kib=64))
    stored = passwords.hash("correct horse")
    assert "correct horse" not in stored
    assert passwords.verify(stored, "correct horse")
    assert not passwords.verify(stored, "wrong horse")
    assert not passwords.verify(None, "correct horse")
    assert not passwords.verify("not-a-hash", "correct horse")
