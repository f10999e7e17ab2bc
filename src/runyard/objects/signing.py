"""HMAC-SHA256 signatures for the links the local backend serves.

The signature covers the method, the key and every query parameter of the link (expiry,
size, content type, the no-overwrite flag, part numbers, response headers), so changing any
of them — or adding one — breaks it. The key is derived from the server secret
(``HMAC(secret, "runyard objects v1")``), so it differs from the one that signs sessions, and
every replica sharing the secret accepts every other replica's links.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

SIGNATURE_PARAM = "sig"
EXPIRES_PARAM = "expires"


def derive_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"runyard objects v1", hashlib.sha256).digest()


def _canonical(method: str, key: str, params: Mapping[str, str]) -> bytes:
    query = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}"
        for name, value in sorted(params.items())
        if name != SIGNATURE_PARAM
    )
    return f"{method.upper()}\n{key}\n{query}".encode()


class LinkSigner:
    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret)

    def sign(self, method: str, key: str, params: Mapping[str, str]) -> str:
        return hmac.new(self._key, _canonical(method, key, params), hashlib.sha256).hexdigest()

    def verify(self, method: str, key: str, params: Mapping[str, str]) -> bool:
        """Constant-time check of ``params[SIGNATURE_PARAM]`` (expiry is the caller's)."""
        given = params.get(SIGNATURE_PARAM, "")
        expected = self.sign(method, key, params)
        return hmac.compare_digest(given.encode(), expected.encode())
