"""The address rules of `url` arguments: every special-purpose range that is not globally
reachable is refused, IPv4 carried inside IPv6 is judged by what it leads to, and URLs that
parsers read differently are refused before any look-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobgate.addresses import is_public, parse_address, url_problem
from jobgate.arguments import ArgumentError, validate_args
from jobgate.config import ConfigError
from jobgate.kinds import Kind, parse_kind

# (address, why it is refused): one from every IANA special-purpose range that is not
# globally reachable, and the IPv6 forms that carry such an IPv4 address.
REFUSED = [
    ("0.0.0.0", "this network"), ("0.1.2.3", "this network"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"), ("127.0.0.1", "loopback"),
    ("127.255.0.1", "loopback"), ("169.254.169.254", "link local (cloud metadata)"),
    ("192.0.0.8", "IETF protocol assignments"), ("192.0.0.170", "NAT64 discovery"),
    ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("192.88.99.1", "6to4 relay anycast"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.1", "benchmarking"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "limited broadcast"),
    ("::", "unspecified"), ("::1", "loopback"), ("::7f00:1", "IPv4-compatible loopback"),
    ("::808:808", "IPv4-compatible (deprecated)"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:100.64.0.1", "IPv4-mapped carrier-grade NAT"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"), ("64:ff9b::a00:1", "NAT64 of private"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of link local"), ("64:ff9b:1::808:808", "local-use NAT64"),
    ("100::1", "discard-only"), ("100:0:0:1::1", "dummy prefix"),
    ("2001::1", "Teredo"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "benchmarking"), ("2001:10::1", "ORCHID (deprecated)"),
    ("2001:db8::1", "documentation"), ("3fff::1", "documentation"), ("5f00::1", "SRv6 SIDs"),
    ("2002:7f00:1::1", "6to4 of loopback"), ("2002:c0a8:101::1", "6to4 of private"),
    ("2002:a9fe:a9fe::1", "6to4 of link local"), ("2002:6440:1::1", "6to4 of CGNAT"),
    ("fc00::1", "unique local"), ("fd12:3456::1", "unique local"),
    ("fe80::1", "link local"), ("febf::1", "link local"), ("fec0::1", "site local"),
    ("feff::1", "site local"), ("ff02::1", "multicast"), ("ff0e::1", "global multicast"),
    ("fe80::1%1", "zoned link local"),
]
PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "100.63.255.255", "100.128.0.1",
          "172.32.0.1", "192.0.1.1", "2606:4700:4700::1111", "2a00:1450:4007:80e::200e",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize(("address", "why"), REFUSED, ids=[a for a, _ in REFUSED])
def test_addresses_that_are_not_globally_reachable_are_refused(address, why):
    assert not is_public(parse_address(address)), why


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_accepted(address):
    assert is_public(parse_address(address))


def _fetch_kind(allow_private: bool = False) -> Kind:
    return parse_kind("fetch", {"argv": ["curl", "{url}"], "args": {"url": {"type": "url"}},
                                "allow_private_urls": allow_private}, ConfigError)


@pytest.mark.parametrize(("address", "why"), REFUSED[:-1], ids=[a for a, _ in REFUSED[:-1]])
def test_a_url_to_such_an_address_is_refused(tmp_path: Path, address, why):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ArgumentError, match="private or local address"):
        validate_args(_fetch_kind(), {"url": f"http://{host}/x"}, tmp_path)


# URLs whose authority one parser reads differently from another (urlsplit against the
# libraries that fetch: requests/urllib3, curl, browsers' WHATWG parser).
AMBIGUOUS = [
    ("http://127.0.0.1\\@8.8.8.8/", "backslash"),
    ("http://8.8.8.8\\@127.0.0.1/", "backslash"),
    ("http://127.0.0.1\\.8.8.8.8/", "backslash"),
    ("http://8.8.8.8\\/@127.0.0.1/", "backslash"),
    ("http://example.com\\x/", "backslash"),
    ("http://example.com/a\\b", "backslash"),
    ("http://user@8.8.8.8/", "user name"),
    ("http://user:pass@8.8.8.8/", "user name"),
    ("http://8.8.8.8@127.0.0.1/", "user name"),
    ("http://127.0.0.1:80@8.8.8.8/", "user name"),
    ("http://a@b@8.8.8.8/", "user name"),
    ("http://127.0.0.1%2523@8.8.8.8/", "user name"),
    ("http://127.0.0.1 @8.8.8.8/", "whitespace"),
    ("http://127.0.0.1\t.example.com/", "whitespace"),
    ("http://127.0.0.1\n/", "whitespace"),
    (" http://8.8.8.8/", "whitespace"),
    ("http://8.8.8.8/\r\nHost: x", "whitespace"),
    ("http://8.8.8.8\x00.example.com/", "control"),
    ("http://8.8.8.8\x7f/", "control"),
    ("http://8.8.8.8\x85/", "control"),
    ("http://example.com\u3000/", "whitespace"),
    ("http://%31%32%37.0.0.1/", "percent-encode"),
    ("http://127.0.0.1%2e/", "percent-encode"),
    ("http://[fe80::1%25eth0]/", "percent-encode"),
    ("http://2130706433/", "non-standard form"),
    ("http://0x7f.1/", "non-standard form"),
    ("http://0177.0.0.1/", "non-standard form"),
    ("http://127.1/", "non-standard form"),
    ("http://127.0.0.01/", "non-standard form"),
    ("http://1.2.3.4.5/", "non-standard form"),
    ("http://ex_ample.com/", "not a valid host name"),
    ("http://-example.com/", "not a valid host name"),
    ("http://exa..mple.com/", "not a valid host name"),
    ("http://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/", "ASCII"),  # fullwidth letters
    ("http://127。0。0。1/", "ASCII"),
    ("http://example.com:0/", "port out of range"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://example.com:8o/", "not a valid URL"),
    ("http://[::1/", "not a valid URL"),
    ("http:///example.com/", "with a host"),
]


@pytest.mark.parametrize(("url", "reason"), AMBIGUOUS, ids=[repr(u) for u, _ in AMBIGUOUS])
def test_urls_parsers_could_read_differently_are_refused_before_any_look_up(url, reason):
    problem = url_problem(url)
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize(("url", "reason"), AMBIGUOUS[:12], ids=[repr(u) for u, _ in
                                                                AMBIGUOUS[:12]])
def test_allow_private_urls_does_not_let_ambiguous_urls_through(tmp_path: Path, url, reason):
    with pytest.raises(ArgumentError) as info:
        validate_args(_fetch_kind(allow_private=True), {"url": url}, tmp_path)
    assert info.value.field == "url"


@pytest.mark.parametrize("url", [
    "http://example.com", "https://example.com:8443/a/b?c=d&e=f@g#h@i",
    "http://xn--mnchen-3ya.de/", "http://8.8.8.8/", "http://[2606:4700:4700::1111]:443/",
    "https://a-b.example.co.uk./path%20with%20escapes", "HTTP://EXAMPLE.COM/",
])
def test_plain_urls_pass(url):
    assert url_problem(url) is None
