"""Session tokens: short-lived access JWTs and rotating refresh JWTs (HS256)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt

from runyard.domain.errors import Unauthorized

TokenType = Literal["access", "refresh"]
_ALGORITHM = "HS256"
_ISSUER = "runyard"


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    token_type: TokenType
    token_id: str
    expires_at: datetime
    #: The sign-in (refresh-token family) an access token belongs to: checked on every
    #: request, so revoking the sign-in ends its access tokens too. None in tokens without it.
    session_id: str | None = None


class TokenSigner:
    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 characters")
        self._secret = secret

    def issue(
        self,
        user_id: str,
        token_type: TokenType,
        token_id: str,
        now: datetime,
        ttl: int,
        *,
        session_id: str | None = None,
    ) -> str:
        payload = {
            "iss": _ISSUER,
            "sub": user_id,
            "typ": token_type,
            "jti": token_id,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(seconds=ttl)).timestamp()),
        }
        if session_id is not None:
            payload["sid"] = session_id
        return jwt.encode(payload, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str, expected: TokenType, now: datetime) -> TokenClaims:
        """Decode and check a token. Every failure is a 401 with a short reason.

        Expiry is checked against ``now`` (the services' clock) rather than PyJWT's own
        reading of the wall clock, so one clock rules every expiry in Runyard.
        """
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={
                    "require": ["exp", "iat", "sub", "jti", "typ"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid {expected} token") from exc
        if payload.get("typ") != expected:
            raise Unauthorized(f"invalid {expected} token")
        if int(payload["exp"]) <= int(now.timestamp()):
            raise Unauthorized(f"{expected} token expired")

        return TokenClaims(
            user_id=str(payload["sub"]),
            token_type=expected,
            token_id=str(payload["jti"]),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            session_id=str(payload["sid"]) if payload.get("sid") is not None else None,
        )
