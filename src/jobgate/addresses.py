"""Which addresses a `url` argument may reach, and which URLs are too ambiguous to check.

An address is refused unless it is globally reachable: every range of IANA's IPv4 and
IPv6 special-purpose address registries that is not marked globally reachable is listed
here (Python's `is_global` is consulted too, but its table depends on the Python version:
3.11 calls `fec0::/10` and `::127.0.0.1` global). An IPv6 address that carries an IPv4
one (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by
the IPv4 address it leads to; Teredo (`2001::/32`), the local-use NAT64 prefix
(`64:ff9b:1::/48`) and the deprecated IPv4-compatible `::a.b.c.d` are refused outright.

A URL is checked as the libraries that fetch it will read it only if every parser reads
it the same way: `url_problem` refuses userinfo (`user@`, the heart of
`http://127.0.0.1\\@8.8.8.8/`), backslashes, whitespace and control characters anywhere,
percent-encoding in the authority, and any host that is not a plain DNS name or an IP
literal in its standard form (`2130706433` and `0x7f.1` are 127.0.0.1 to some parsers).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry: the entries not globally reachable
# (192.0.0.9/32 and 192.0.0.10/32, which are, sit inside 192.0.0.0/24 and are refused
# with it: no job needs to fetch from a NAT traversal anycast address).
_V4_NOT_GLOBAL = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private use
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link local
    "172.16.0.0/12",  # private use
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private use
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255/32 limited broadcast
)]

# IANA IPv6 Special-Purpose Address Registry (and the address space registry's
# multicast and deprecated site-local blocks): the entries not globally reachable.
_V6_NOT_GLOBAL = [ipaddress.IPv6Network(n) for n in (
    "::/96",  # unspecified, loopback, deprecated IPv4-compatible (in 0000::/8, reserved)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "100:0:0:1::/64",  # dummy IPv6 prefix
    "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) among them
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing (SRv6) SIDs
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local unicast
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)]
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (IPv4-mapped, NAT64, 6to4), if any."""
    if addr in _MAPPED or addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _SIXTOFOUR:
        return ipaddress.IPv4Address((int(addr) >> 80) & 0xFFFFFFFF)
    return None


def is_public(addr: IPAddress) -> bool:
    """True if `addr` is globally reachable, by the IANA registries and by Python's own
    table both; an IPv6 address carrying an IPv4 one is judged by that one as well."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return False  # a zone index names a local interface
        inner = embedded_ipv4(addr)
        if inner is not None:
            return is_public(inner)
        if any(addr in net for net in _V6_NOT_GLOBAL):
            return False
    elif any(addr in net for net in _V4_NOT_GLOBAL):
        return False
    return addr.is_global and not addr.is_multicast


def parse_address(text: str) -> IPAddress:
    """An address as `getaddrinfo` gives it (an IPv6 one may end with `%zone`)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f-\x9f\\\s]")


def url_problem(url: str) -> str | None:
    """Why `url` is refused before any look-up (see the module's docstring), or None.

    Accepted: `http://` or `https://`, a host that is a DNS name of letters, digits and
    hyphens (internationalized names in their `xn--` form) or an IP literal, an optional
    port, then anything without whitespace, backslashes or control characters.
    """
    if _FORBIDDEN.search(url):
        return "must not contain whitespace, backslashes or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "expected an http:// or https:// URL with a host"
    if "@" in parts.netloc:
        return "must not carry a user name or password (user@host)"
    if "%" in parts.netloc:
        return "must not percent-encode its host"
    if not parts.netloc.isascii():
        return "must name its host in ASCII (an internationalized name in its xn-- form)"
    host = parts.hostname or ""
    if port is not None and not 0 < port < 65536:
        return "has a port out of range"
    if parts.netloc.startswith("["):
        return None  # urlsplit checked the IPv6 literal
    if not host:
        return "expected an http:// or https:// URL with a host"
    labels = host.removesuffix(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return f"host {host!r} is not a valid host name or IP address"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # A numeric last label makes an IPv4 address to some parsers: only the standard
        # dotted quad is read the same way by all of them.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"host {host!r} is an IPv4 address in a non-standard form"
    return None
