"""Where webhooks may point: the server's egress policy (``security/egress.py``) with the
webhook's wording. Public ``https://`` endpoints; plain ``http://`` only to loopback, and
loopback at all only with ``allow_http_loopback`` (development and tests)."""

from __future__ import annotations

from runyard.security.egress import Destination, EgressPolicy, Resolver


def webhook_policy(allow_http_loopback: bool, resolver: Resolver | None = None) -> EgressPolicy:
    return EgressPolicy(
        subject="webhook_url", allow_loopback=allow_http_loopback, resolver=resolver
    )


async def check_destination(
    url: str, allow_http_loopback: bool, resolver: Resolver | None = None
) -> Destination:
    """Refuse (``EgressRefused``, a 400) a URL that is not https, or whose host resolves to any
    address that is not public. Run at creation and update; every delivery attempt checks
    again in its transport (the name may resolve differently later) and connects only to
    the addresses that passed."""
    return await webhook_policy(allow_http_loopback, resolver).check_url(url)
