"""URL policy: which URLs and addresses the gateway may fetch, and which host its links name.

Used for every fetch the gateway makes of a URL it did not configure (provider images today);
the address filter is also the default of ``upstream.FetchGuard``, below every outbound call.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

MAX_URL_LENGTH = 4096
_CONTROL_OR_SPACE = re.compile(r"[\r\n\t\x00 ]")
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class LinkRefused(Exception):
    """A link the gateway did not issue, or may no longer fetch; ``reason`` is for the log."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


# --- the origin the gateway's own links name ---


def base_url(public_base_url: str, scheme: str, host_header: str, fallback_host: str) -> str:
    """``PUBLIC_BASE_URL``, else the request's scheme and Host when that is a plain host name."""
    if public_base_url:
        return public_base_url
    host = host_header if _SAFE_HOST.match(host_header or "") else fallback_host
    return f"{scheme}://{host}"


# --- URL and address policy for fetches ---


def check_fetch_url(url: str) -> None:
    """Refuse anything but plain http(s) URLs: no user-info, no other scheme, sane length."""
    if len(url) > MAX_URL_LENGTH:
        raise LinkRefused("URL too long")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it validates the port)
    except ValueError:
        raise LinkRefused("malformed URL") from None
    if parts.scheme not in ("http", "https"):
        raise LinkRefused(f"scheme {parts.scheme!r} is not allowed")
    if not parts.hostname:
        raise LinkRefused("URL has no host")
    if "@" in parts.netloc:  # user-info, with or without a password
        raise LinkRefused("URL carries user-info")
    if _CONTROL_OR_SPACE.search(url):
        raise LinkRefused("URL holds control characters or spaces")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_origin(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL, the default port made explicit; None if
    ``url`` has no such origin. The host is compared as written (lower-cased), never resolved."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname  # lower-cased, IPv6 brackets removed
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port if port is not None else _DEFAULT_PORTS[scheme]}"


_BLOCKED_V4 = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network", including 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including 255.255.255.255
    )
)
_BLOCKED_V6 = tuple(
    ipaddress.ip_network(net)
    for net in (
        "::/128",
        "::1/128",
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT): refused whole, no public host needs it
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: the IPv4 inside is obfuscated, refuse it whole
        "2001:2::/48",
        "2001:10::/28",
        "2001:20::/28",
        "2001:db8::/32",
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 segment identifiers, never globally reachable (RFC 9602)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv6 one: mapped, compatible, 6to4 or NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """Whether an address the gateway is about to connect to is on the public internet.

    Refuses loopback, private, link-local, CGNAT, unspecified, multicast and reserved ranges,
    unique-local IPv6, and IPv4 addresses hidden in IPv6 (mapped, compatible, translated, 6to4,
    NAT64, Teredo).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(str(embedded))
        if any(ip in net for net in _BLOCKED_V6):
            return False
        return ip.is_global
    if any(ip in net for net in _BLOCKED_V4):
        return False
    return ip.is_global
