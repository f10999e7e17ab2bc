"""Credential families, how their secrets look, and how they are stored (hashed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum


class CredentialKind(StrEnum):
    INTEGRATION = "integration"
    AGENT = "agent"
    DEVICE = "device"


PREFIXES: dict[CredentialKind, str] = {
    CredentialKind.INTEGRATION: "sk-",
    CredentialKind.AGENT: "ak-",
    CredentialKind.DEVICE: "dk-",
}

#: Length of ``key_prefix``: the part of a secret that stays visible after creation.
KEY_PREFIX_LENGTH = 12


def kind_of(token: str) -> CredentialKind | None:
    """The family a bearer token claims by its prefix, or ``None`` (a session JWT)."""
    for kind, prefix in PREFIXES.items():
        if token.startswith(prefix):
            return kind
    return None


def generate_secret(kind: CredentialKind) -> str:
    """A new secret: the family prefix and 256 random bits, URL-safe."""
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Storage form of a high-entropy secret. SHA-256 suffices: these are not passwords."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def key_prefix(secret: str) -> str:
    return secret[:KEY_PREFIX_LENGTH]
