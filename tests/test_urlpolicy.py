"""The security checks in one table: signatures, fetchable URLs, and every address-filter bypass."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import pytest

from tornado_imagegate.images.links import (
    LinkSigner,
    derive_secret,
    parse_link,
    signed_link,
    url_key,
)
from tornado_imagegate.urlpolicy import LinkRefused, check_fetch_url, is_public_address, url_origin

REFUSED = [
    # IPv4 ranges
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "198.18.0.5",
    "198.51.100.7",
    "203.0.113.9",
    "192.0.0.8",
    # IPv6 ranges
    "::",
    "::1",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456:789a::1",
    "ff02::1",
    "fec0::1",
    "2001:db8::1",
    "3fff::1",  # documentation (RFC 9637)
    "5f00::1",  # SRv6 segment identifiers
    "100::1",
    # IPv4 hidden in IPv6
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:7f00:1",
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
    "::ffff:0:a00:1",  # IPv4-translated 10.0.0.1
    "::ffff:0:a9fe:a9fe",  # IPv4-translated 169.254.169.254
    "::ffff:0:808:808",  # IPv4-translated, refused whole even with a public address inside
    "::ffff:0:0:0",
    "::127.0.0.1",
    "::10.0.0.1",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "64:ff9b::169.254.169.254",
    "64:ff9b:1::1",
    "2002:c0a8:101::",
    "2002:7f00:1::1",
    "2002:a00:1::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    # not addresses at all
    "",
    "localhost",
    "example.com",
    "1.2.3",
    "::ffff:999.1.1.1",
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",
    "100.128.0.1",
    "172.32.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_and_hidden_addresses_are_refused(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "http://user:pass@example.com/a.png",
        "http://user@example.com/a.png",
        "http://example.com@127.0.0.1/a.png",
        "http:///nohost",
        "http://example.com:99999/a.png",
        "http://example.com/a b.png",
        "http://example.com/a\r\nX-Injected: 1",
        "https://example.com/" + "a" * 5000,
    ],
)
def test_only_plain_http_urls_may_be_fetched(url):
    with pytest.raises(LinkRefused):
        check_fetch_url(url)


@pytest.mark.parametrize(
    "url", ["http://example.com/a.png", "https://cdn.example.com:8443/x/y.webp?sig=abc&t=1"]
)
def test_plain_urls_pass(url):
    check_fetch_url(url)


def test_signature_round_trip_and_tampering():
    signer = LinkSigner(b"k" * 32)
    query = signer.query_for_url("https://cdn.example.com/a.png?x=1", now=1000)
    url, expired = signer.verify(query["u"], query["e"], query["s"])
    assert url == "https://cdn.example.com/a.png?x=1"
    assert expired  # issued at t=1000, long past its fetch window
    fresh = signer.query_for_url("https://cdn.example.com/a.png")
    assert signer.verify(fresh["u"], fresh["e"], fresh["s"])[1] is False
    other = LinkSigner(b"j" * 32)
    for bad in (
        (
            query["u"],
            query["e"],
            other.query_for_url("https://cdn.example.com/a.png?x=1", now=1000)["s"],
        ),
        (query["u"], str(int(query["e"]) + 1), query["s"]),
        (query["u"] + "x", query["e"], query["s"]),
        (query["u"], "-5", query["s"]),
        (query["u"], query["e"], ""),
        ("!!", query["e"], query["s"]),
    ):
        with pytest.raises(LinkRefused):
            signer.verify(*bad)


def test_a_link_read_before_is_refused_as_before_when_tampered_or_under_another_secret():
    signer, other = LinkSigner(b"k" * 32), LinkSigner(b"j" * 32)
    url = "https://cdn.example.com/seen.png"
    fields = signer.query_for_url(url)
    query = {name: [value.encode()] for name, value in fields.items()}
    for _ in range(2):  # read twice: the second reading may be remembered
        assert parse_link(query, signer) == (url_key(url), url, False)
    with pytest.raises(LinkRefused):
        parse_link(query, other)
    tampered = {**query, "s": [fields["s"][:-2].encode() + b"AA"]}
    with pytest.raises(LinkRefused):
        parse_link(tampered, signer)
    old = {name: [value.encode()] for name, value in signer.query_for_url(url, now=0).items()}
    for _ in range(2):
        assert parse_link(old, signer) == (url_key(url), url, True)


@pytest.mark.parametrize(
    "url", ["https://cdn.example.com/a b.png?x=1&y=é#frag", "http://[::1]:8080/%41?%3D=%26"]
)
def test_signed_links_need_no_quoting_and_verify(url):
    signer = LinkSigner(b"k" * 32)
    link = signed_link("https://gw.example", signer, url)
    base, _, query = link.partition("?")
    assert base == "https://gw.example/image-proxy"
    assert re.fullmatch(r"u=[A-Za-z0-9_-]+&e=[0-9]+&s=[A-Za-z0-9_-]+", query)
    fields = {name: values[0] for name, values in parse_qs(query, strict_parsing=True).items()}
    assert signer.verify(fields["u"], fields["e"], fields["s"]) == (url, False)


def test_derived_secret():
    assert derive_secret("", ["b", "a"]) == derive_secret("", ["a", "b", "a"])
    assert derive_secret("", ["a"]) != derive_secret("", ["b"])
    assert derive_secret("s", ["a"]) == derive_secret("s", ["b"])
    assert derive_secret("", []) != derive_secret("", [])  # nothing to derive from: random


def test_url_keys_cannot_be_confused_with_ids():
    assert len(url_key("https://x/y")) == 64


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:9102/api/v1/generate_image", "http://127.0.0.1:9102"),
        ("http://127.0.0.1:9102/images/x.png?a=1", "http://127.0.0.1:9102"),
        ("http://sd.local/images/x.png", "http://sd.local:80"),
        ("http://sd.local:80/x.png", "http://sd.local:80"),
        ("HTTPS://SD.Example.org/x.png", "https://sd.example.org:443"),
        ("https://sd.example.org:8443/x.png", "https://sd.example.org:8443"),
        ("http://[::1]:9102/x.png", "http://[::1]:9102"),
        ("ftp://127.0.0.1/x.png", None),
        ("http:///x.png", None),
        ("http://127.0.0.1:99999/x.png", None),
        ("not a url", None),
    ],
)
def test_an_origin_is_scheme_host_as_written_and_explicit_port(url, origin):
    assert url_origin(url) == origin


def test_the_same_host_on_another_port_or_scheme_is_another_origin():
    provider = url_origin("http://127.0.0.1:9102/api/v1/generate_image")
    assert url_origin("http://127.0.0.1:9103/x.png") != provider
    assert url_origin("https://127.0.0.1:9102/x.png") != provider
    assert url_origin("http://localhost:9102/x.png") != provider  # names are never resolved
