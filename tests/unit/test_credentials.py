from __future__ import annotations

from runyard.domain.credentials import (
    CredentialKind,
    generate_secret,
    hash_secret,
    key_prefix,
    kind_of,
    secret_matches,
)


def test_secrets_carry_their_family_prefix() -> None:
    for kind, prefix in [
        (CredentialKind.INTEGRATION, "sk-"),
        (CredentialKind.AGENT, "ak-"),
        (CredentialKind.DEVICE, "dk-"),
    ]:
        secret = generate_secret(kind)
        assert secret.startswith(prefix)
        assert kind_of(secret) is kind
        assert len(secret) > 40
    assert kind_of("eyJhbGciOi.x.y") is None


def test_secrets_are_stored_as_hashes_and_compared_by_hash() -> None:
    secret = generate_secret(CredentialKind.INTEGRATION)
    stored = hash_secret(secret)
    assert secret not in stored
    assert secret_matches(secret, stored)
    assert not secret_matches(secret + "x", stored)
    assert key_prefix(secret) == secret[:12]
    assert generate_secret(CredentialKind.INTEGRATION) != secret
