"""Where webhooks may point: public https endpoints (plain http only to loopback in development)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from runyard.domain.errors import BadRequest


def _forbidden(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool
) -> bool:
    if address.is_loopback:
        return not allow_loopback
    return (
        address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def check_shape(url: str, allow_http_loopback: bool) -> tuple[str, int]:
    """Scheme, host and port rules that need no DNS. Returns (host, port)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise BadRequest("webhook_url must be an https:// URL")
    if parts.username or parts.password:
        raise BadRequest("webhook_url must not contain credentials")
    loopback_name = host == "localhost" or host.endswith(".localhost")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    is_loopback = loopback_name or (literal is not None and literal.is_loopback)
    if parts.scheme == "http" and not (allow_http_loopback and is_loopback):
        raise BadRequest("webhook_url must be an https:// URL (http:// is not accepted)")
    if is_loopback and not allow_http_loopback:
        raise BadRequest("webhook_url must not point to this machine (loopback)")
    if literal is not None and _forbidden(literal, allow_http_loopback):
        raise BadRequest("webhook_url must not point to a private or link-local address")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BadRequest("webhook_url has an invalid port") from exc
    return host, port


async def check_destination(url: str, allow_http_loopback: bool) -> None:
    """Refuse URLs whose host resolves to private, link-local or (unless allowed) loopback
    addresses. Run at creation and again before every delivery (DNS can change)."""
    host, port = check_shape(url, allow_http_loopback)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BadRequest(f"webhook_url host {host!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if _forbidden(address, allow_http_loopback):
            raise BadRequest(f"webhook_url host {host!r} resolves to a private address")
