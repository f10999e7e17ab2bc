"""The egress policy: which addresses the server refuses to connect to, judged from what a
name resolves to (an injected resolver; no DNS, no network)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from runyard.security.egress import EgressPolicy, EgressRefused


def answering(*addresses: str) -> tuple[EgressPolicy, list[str]]:
    """A policy whose resolver answers ``addresses`` for any name, and the names it was asked."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return list(addresses)

    return EgressPolicy(subject="webhook_url", resolver=resolve), asked


REFUSED = [
    # The findings: shared address space (a cloud metadata API), IETF assignments, 6to4
    # wrapping link-local.
    ("100.100.100.200", "100.100.100.200"),
    ("100.64.0.1", "100.64.0.1"),
    ("192.0.0.1", "192.0.0.1"),
    ("192.0.0.9", "192.0.0.9"),
    ("2002:a9fe:a9fe::", "2002:a9fe:a9fe:: (6to4 for 169.254.169.254)"),
    # Private, link-local, unspecified, multicast, reserved.
    ("169.254.169.254", "169.254.169.254"),
    ("10.0.0.1", "10.0.0.1"),
    ("172.16.5.4", "172.16.5.4"),
    ("172.31.255.255", "172.31.255.255"),
    ("192.168.1.1", "192.168.1.1"),
    ("0.0.0.0", "0.0.0.0"),
    ("224.0.0.1", "224.0.0.1"),
    ("239.255.255.250", "239.255.255.250"),
    ("255.255.255.255", "255.255.255.255"),
    ("198.18.0.1", "198.18.0.1"),
    ("fc00::1", "fc00::1"),
    ("fd12:3456::1", "fd12:3456::1"),
    ("fe80::1", "fe80::1"),
    ("::", "::"),
    ("ff0e::1", "ff0e::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("3fff::1", "3fff::1"),
    # IPv6 forms that carry an IPv4 address, judged by it.
    ("2002:0a00:0001::", "2002:a00:1:: (6to4 for 10.0.0.1)"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "(Teredo for 10.0.0.1)"),
    ("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe (NAT64 for 169.254.169.254)"),
    ("64:ff9b:1::a9fe:a9fe", "(NAT64 for 169.254.169.254)"),
    ("64:ff9b:1::808:808", "64:ff9b:1::808:808 (NAT64 for 8.8.8.8)"),  # local-use prefix
    ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe (IPv4-mapped for 169.254.169.254)"),
    ("::ffff:10.0.0.1", "(IPv4-mapped for 10.0.0.1)"),
    ("::a9fe:a9fe", "::a9fe:a9fe (IPv4-compatible for 169.254.169.254)"),
    ("::808:808", "(IPv4-compatible for 8.8.8.8)"),  # deprecated form: never a server's
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "(Teredo for 8.8.8.8)"),  # Teredo: never
]


@pytest.mark.parametrize(("answer", "shown"), REFUSED)
async def test_a_name_resolving_to_a_non_public_address_is_refused(answer: str, shown: str) -> None:
    policy, asked = answering(answer)
    with pytest.raises(EgressRefused) as refused:
        await policy.check_url("https://hooks.example.test/x")
    assert asked == ["hooks.example.test"]
    message = refused.value.message
    assert message.startswith("webhook_url resolves to ")
    assert shown in message
    assert message.endswith("which is not a public address")


@pytest.mark.parametrize(("answer", "shown"), REFUSED)
async def test_a_url_naming_a_non_public_address_is_refused_without_dns(
    answer: str, shown: str
) -> None:
    policy, asked = answering("8.8.8.8")
    host = f"[{answer}]" if ":" in answer else answer
    with pytest.raises(EgressRefused, match=r"points to .*which is not a public address"):
        await policy.check_url(f"https://{host}/x")
    assert asked == []


@pytest.mark.parametrize(
    "answer",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "2002:808:808::",  # 6to4 for 8.8.8.8
        "64:ff9b::808:808",  # well-known NAT64 for 8.8.8.8
        "::ffff:8.8.8.8",
    ],
)
async def test_public_addresses_pass(answer: str) -> None:
    policy, _ = answering(answer)
    destination = await policy.check_url("https://hooks.example.test:8443/x")
    assert destination.addresses == (ipaddress.ip_address(answer),)
    assert (destination.host, destination.port) == ("hooks.example.test", 8443)


async def test_every_answer_must_pass() -> None:
    """Refused as a whole when any address fails: the first failing one is named."""
    policy, _ = answering("8.8.8.8", "10.0.0.7", "1.1.1.1")
    with pytest.raises(EgressRefused, match=r"resolves to 10\.0\.0\.7, which is not a public"):
        await policy.check_url("https://mixed.example.test/")


async def test_loopback_only_when_allowed_and_nothing_else_private() -> None:
    for loopback in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        policy, _ = answering(loopback)
        with pytest.raises(EgressRefused, match="which is a loopback address"):
            await policy.check_url("https://hooks.example.test/")
        allowed = EgressPolicy(resolver=policy.resolver, allow_loopback=True)
        assert len((await allowed.check_url("https://hooks.example.test/")).addresses) == 1
    # Allowing loopback allows nothing else private, nor loopback through a NAT64 gateway.
    for private in ("10.0.0.1", "169.254.169.254", "100.100.100.200", "64:ff9b::7f00:1"):
        policy, _ = answering(private)
        allowed = EgressPolicy(resolver=policy.resolver, allow_loopback=True)
        with pytest.raises(EgressRefused, match="not a public address"):
            await allowed.check_url("https://hooks.example.test/")


async def test_plain_http_only_to_loopback_in_development() -> None:
    public, asked = answering("8.8.8.8")
    with pytest.raises(EgressRefused, match=r"https://"):
        await public.check_url("http://hooks.example.test/")
    development = EgressPolicy(resolver=public.resolver, allow_loopback=True)
    with pytest.raises(EgressRefused, match=r"https://"):
        await development.check_url("http://hooks.example.test/")  # not a loopback name
    assert asked == []  # refused from the URL alone
    # A loopback name that resolves elsewhere is still not sent in plain text.
    with pytest.raises(EgressRefused, match=r"http:// only to loopback"):
        await development.check_url("http://localhost:8080/")
    loopback, _ = answering("127.0.0.1")
    development = EgressPolicy(resolver=loopback.resolver, allow_loopback=True)
    assert (await development.check_url("http://localhost:8080/")).port == 8080


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.test/", "https://"),
        ("not a url", "https://"),
        ("https://user:pw@hooks.example.test/", "credentials"),
        ("https://hooks.example.test:99999/", "invalid port"),
        ("https://localhost/", "loopback"),
        ("https://api.localhost/", "loopback"),
    ],
)
async def test_url_shape(url: str, message: str) -> None:
    policy, asked = answering("8.8.8.8")
    with pytest.raises(EgressRefused, match=message):
        await policy.check_url(url)
    assert asked == []


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    async def nothing(host: str, port: int) -> Sequence[str]:
        raise OSError("Name or service not known")

    policy = EgressPolicy(subject="webhook_url", resolver=nothing)
    with pytest.raises(EgressRefused, match=r"host 'gone\.example\.test' does not resolve"):
        await policy.check_url("https://gone.example.test/")
