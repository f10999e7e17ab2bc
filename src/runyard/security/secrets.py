"""Webhook signing secrets at rest: encrypted (Fernet) with a key derived from the server secret.

They cannot be hashed like keys: the reference shows the secret again on ``GET /webhooks/{id}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, server_secret: str) -> None:
        key = hmac.new(server_secret.encode(), b"runyard webhook secrets", hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("webhook secret cannot be decrypted (server secret changed?)") from exc
