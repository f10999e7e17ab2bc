"""Egress: where the server may send a request of its own, and connecting only there.

One policy for every outbound request the server makes (webhooks today; ComfyUI Cloud and
external container services later):

- only global unicast addresses, judged by ``ipaddress``'s ``is_global`` plus explicit
  ranges (shared address space, 192.0.0.0/24, multicast, IPv6 outside 2000::/3); an IPv6
  address that carries an IPv4 one (IPv4-mapped, NAT64, 6to4, Teredo, IPv4-compatible) is
  judged by the address it carries too. Loopback only when the caller allows it
  (development and tests); nothing else private, ever;
- a name is resolved once and every address it resolves to must pass, or the request is
  refused naming the first that failed (a name mixing public and private answers is either
  misconfigured or an attack);
- the connection goes to an address that was checked (``EgressTransport`` pins it), while
  TLS (SNI, certificate verification) and the ``Host`` header keep the name, so a second
  DNS answer (rebinding) is never used;
- plain ``http://`` only to loopback, when loopback is allowed; no redirects are followed
  (the transport sends exactly one request; clients built here never follow them).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from runyard.domain.errors import BadRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port) -> addresses`` as text, in the order to try them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

NOT_PUBLIC = "is not a public address"
LOOPBACK = "is a loopback address (allowed only in development)"

#: Refused although some Python versions call them global.
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches this machine on Linux
        "100.64.0.0/10",  # shared address space (carrier NAT; 100.100.100.200 is a metadata API)
        "192.0.0.0/24",  # IETF protocol assignments, the anycast ones included
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_BLOCKED_V6 = (ipaddress.IPv6Network("3fff::/20"),)  # documentation (RFC 9637)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_RESOLVE_TIMEOUT = 10.0


class EgressRefused(BadRequest):
    """A destination this policy does not connect to; the message says which and why."""


def embedded(address: Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, with the name of the form, or None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64 or address in _NAT64_LOCAL:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]  # (server, client): the client, un-inverted
    if 1 < int(address) < 1 << 32:
        return "IPv4-compatible", ipaddress.IPv4Address(int(address))
    return None


def describe(address: Address) -> str:
    """``2002:a9fe:a9fe::`` → ``2002:a9fe:a9fe:: (6to4 for 169.254.169.254)``."""
    wrapped = embedded(address)
    return str(address) if wrapped is None else f"{address} ({wrapped[0]} for {wrapped[1]})"


def is_loopback(address: Address) -> bool:
    wrapped = embedded(address)
    if wrapped is not None and wrapped[0] == "IPv4-mapped":
        return wrapped[1].is_loopback
    return address.is_loopback


def _v4_refusal(address: ipaddress.IPv4Address, allow_loopback: bool) -> str | None:
    if address.is_loopback:
        return None if allow_loopback else LOOPBACK
    if not address.is_global or any(address in net for net in _BLOCKED_V4):
        return NOT_PUBLIC
    return None


def refusal(address: Address, allow_loopback: bool = False) -> str | None:
    """Why nothing may connect to ``address`` (a phrase after "which"), or None if it may."""
    if isinstance(address, ipaddress.IPv4Address):
        return _v4_refusal(address, allow_loopback)
    wrapped = embedded(address)
    if wrapped is not None:
        form, inner = wrapped
        if form == "IPv4-mapped":
            inner_refusal = _v4_refusal(inner, allow_loopback)
        else:  # the others would reach a gateway's or a tunnel's loopback, never ours
            inner_refusal = NOT_PUBLIC if inner.is_loopback else _v4_refusal(inner, False)
        if inner_refusal is not None:
            return inner_refusal
        if form == "IPv4-mapped" or address in _NAT64 or (form == "6to4" and address.is_global):
            return None  # a translation to a public IPv4 address
        return NOT_PUBLIC  # Teredo, local-use NAT64, IPv4-compatible: never a server's address
    if address.is_loopback:
        return None if allow_loopback else LOOPBACK
    if (
        address not in _GLOBAL_UNICAST_V6
        or not address.is_global
        or any(address in net for net in _BLOCKED_V6)
    ):
        return NOT_PUBLIC
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (``getaddrinfo``), in its order. Tests replace it."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Destination:
    """A URL that passed: connect only to ``addresses`` (in order) on ``port``."""

    scheme: str
    host: str
    port: int
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class EgressPolicy:
    #: Names the URL in refusals, e.g. ``webhook_url``.
    subject: str = "destination"
    #: Loopback addresses (and plain ``http://`` to them): development and tests only.
    allow_loopback: bool = False
    #: None: ``system_resolver``, looked up at each call.
    resolver: Resolver | None = None

    def refusal(self, address: Address) -> str | None:
        return refusal(address, self.allow_loopback)

    def _refuse(self, message: str) -> EgressRefused:
        return EgressRefused(f"{self.subject} {message}")

    async def resolve(self, host: str, port: int) -> tuple[Address, ...]:
        """Every address ``host`` resolves to, each checked; refused if any fails."""
        resolver = self.resolver or system_resolver
        try:
            answers = await asyncio.wait_for(resolver(host, port), _RESOLVE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise self._refuse(f"host {host!r} does not resolve") from exc
        addresses: list[Address] = []
        for answer in answers:
            address = ipaddress.ip_address(answer)
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
                # Scoped addresses are link-local; drop the zone so it is judged (and shown) plain.
                address = ipaddress.IPv6Address(answer.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise self._refuse(f"host {host!r} does not resolve")
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                raise self._refuse(f"resolves to {describe(address)}, which {why}")
        return tuple(addresses)

    async def check_url(self, url: str) -> Destination:
        """Scheme, credentials, port and every address the host resolves to."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or not host:
            raise self._refuse("must be an https:// URL")
        if parts.username or parts.password:
            raise self._refuse("must not contain credentials")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise self._refuse("has an invalid port") from exc
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        loopback_name = host == "localhost" or host.endswith(".localhost")
        named_loopback = loopback_name or (literal is not None and is_loopback(literal))
        # Refused before any DNS lookup where the URL alone says enough.
        if parts.scheme == "http" and not (self.allow_loopback and named_loopback):
            raise self._refuse("must be an https:// URL (http:// is not accepted)")
        if named_loopback and not self.allow_loopback:
            raise self._refuse("must not point to this machine (loopback)")
        if literal is not None:
            why = self.refusal(literal)
            if why is not None:
                raise self._refuse(f"points to {describe(literal)}, which {why}")
            addresses: tuple[Address, ...] = (literal,)
        else:
            addresses = await self.resolve(host, port)
        if parts.scheme == "http" and not all(is_loopback(a) for a in addresses):
            raise self._refuse("must be an https:// URL (http:// only to loopback)")
        return Destination(parts.scheme, host, port, addresses)


@dataclass(frozen=True)
class _Pin:
    port: int
    addresses: tuple[Address, ...]


#: The checked addresses of the request this task is sending. Set around one request by
#: ``EgressTransport``; httpcore opens the connection in that same task.
_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("egress_pin", default=None)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the pinned addresses whatever host httpcore asks for; refuses without a pin."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.port != port:
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        failure: Exception | None = None
        for address in pin.addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # a pin always holds at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not an egress destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class EgressTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that checks each request's URL with ``policy`` (resolving the host
    once) and connects only to the addresses it checked. A refusal raises ``EgressRefused``
    before anything is sent. Pooled connections are reused only for the same scheme, host
    and port, and always lead to an address that was checked when it was opened.

    ``network_backend`` is for tests (observe connections without leaving loopback);
    ``verify`` an SSL context to trust other roots (tests); by default httpx's (certifi, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``). Verification is never turned off.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext | None = None,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        ssl_context = verify or httpx.create_ssl_context()
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self.policy = policy
        # httpx has no public hook for the network backend: the same pool httpx builds (no
        # proxy ever: a proxy would connect wherever it likes), with the pinning backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(network_backend or httpcore.AnyIOBackend()),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        destination = await self.policy.check_url(str(request.url))
        token = _PIN.set(_Pin(destination.port, destination.addresses))
        try:
            return await super().handle_async_request(request)
        finally:
            _PIN.reset(token)


def egress_client(transport: EgressTransport, timeout: float) -> httpx.AsyncClient:
    """An httpx client on ``transport`` that never follows redirects nor reads proxy or
    credential settings from the environment."""
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
    )
