"""Image links: the ids and signatures of the links the gateway issues, and reading them back.

A link names an image kept as bytes (``?id=``: an unguessable id of the content) or an upstream
image (``?u=&e=&s=``: its URL, the end of the window in which the gateway may fetch it, and an
HMAC of both). Reading a link makes no request and looks nothing up: it names an image, or it is
refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from tornado_imagegate.urlpolicy import MAX_URL_LENGTH, LinkRefused

IMAGE_PROXY_PATH = "/image-proxy"
# How long a signed link may make the gateway fetch its upstream URL. Kept images are served
# for as long as they are kept, whatever the age of the link.
LINK_FETCH_WINDOW_SECONDS = 24 * 3600
_IMAGE_ID = re.compile(r"^[0-9a-f]{32}$")
# Signed links whose check is remembered: a hit on a popular image skips base64 and the HMAC
# (20 us -> 4 us a hit here). At most about 10 KB each (a URL within MAX_URL_LENGTH, twice).
SIGNED_LINKS_REMEMBERED = 1024


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkSigner:
    """Signs and verifies image links with HMAC-SHA256 under the proxy secret.

    Links signed under an ``earlier`` secret still verify; new links are signed under ``secret``.
    """

    secret: bytes
    earlier: tuple[bytes, ...] = ()

    def image_id(self, data: bytes) -> str:
        """The id of image bytes: 128 bits of an HMAC of the content, unguessable without the key.

        The same image always gets the same link, and knowing one link tells nothing of another.
        """
        return self.image_id_of_digest(hashlib.sha256(data).digest())

    def image_id_of_digest(self, digest: bytes) -> str:
        """``image_id`` from the image's SHA-256 digest, when the caller has it already."""
        return hmac.digest(self.secret, b"image-id\n" + digest, "sha256").hex()[:32]

    def _signature(self, url: str, expires: int, secret: bytes | None = None) -> bytes:
        key = self.secret if secret is None else secret
        return hmac.digest(key, f"{expires}\n{url}".encode(), "sha256")

    def query_for_url(self, url: str, now: float | None = None) -> dict[str, str]:
        """The query of a link that lets the gateway fetch ``url`` for a day, and serve it after."""
        expires = int(now if now is not None else time.time()) + LINK_FETCH_WINDOW_SECONDS
        return {
            "u": _b64encode(url.encode("utf-8")),
            "e": str(expires),
            "s": _b64encode(self._signature(url, expires)),
        }

    def verify(self, encoded_url: str, expires: str, signature: str) -> tuple[str, bool]:
        """Check a signed link; return the upstream URL and whether its fetch window is over.

        Raises LinkRefused for anything the gateway did not sign.
        """
        url, expiry = self.signed_url(encoded_url, expires, signature)
        return url, time.time() > expiry

    def signed_url(self, encoded_url: str, expires: str, signature: str) -> tuple[str, int]:
        """The upstream URL of a signed link and the end of its fetch window; LinkRefused for
        anything the gateway did not sign."""
        try:
            url = _b64decode(encoded_url).decode("utf-8")
            given = _b64decode(signature)
            expiry = int(expires)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise LinkRefused("malformed signed link") from None
        if not expires.isdigit() or len(url) > MAX_URL_LENGTH:
            raise LinkRefused("malformed signed link")
        if not any(
            hmac.compare_digest(given, self._signature(url, expiry, secret))
            for secret in (self.secret, *self.earlier)
        ):
            raise LinkRefused("bad signature")
        return url, expiry


def is_image_id(value: str) -> bool:
    """Whether ``value`` has the form of an id this gateway issues."""
    return bool(_IMAGE_ID.match(value))


def url_key(url: str) -> str:
    """The store key of an upstream image URL (64 hex characters: never a valid opaque id)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def image_link(base_url: str, image_id: str) -> str:
    """The absolute link that serves an image kept as bytes."""
    return f"{base_url}{IMAGE_PROXY_PATH}?id={image_id}"  # hex: nothing to quote


def signed_link(base_url: str, signer: LinkSigner, url: str) -> str:
    """The absolute, signed link that serves an upstream image through the gateway."""
    query = signer.query_for_url(url)
    # Unpadded URL-safe base64 and digits: nothing in the values needs quoting.
    return f"{base_url}{IMAGE_PROXY_PATH}?u={query['u']}&e={query['e']}&s={query['s']}"


def link_query(url: str) -> dict[str, list[bytes]] | None:
    """The query of a link to this gateway's ``/image-proxy`` (absolute on any host, or
    relative), as ``parse_link`` reads it; None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("", "http", "https") or not parts.path.endswith(IMAGE_PROXY_PATH):
        return None
    query = parse_qs(parts.query, keep_blank_values=True)
    if not ("id" in query or {"u", "e", "s"} <= set(query)):
        return None
    return {name: [value.encode("utf-8") for value in values] for name, values in query.items()}


def derive_secret(configured: str, material: Iterable[str]) -> bytes:
    """The signing key: ``IMAGE_PROXY_SECRET`` if set, else derived from the configured secrets.

    Derived from the keys in the configuration, the key stays the same across restarts as long as
    they do, so links keep working. With no secret configured at all, a random key is used (links
    to fetched images then last as long as the process or the disk tier).
    """
    if configured:
        return hashlib.sha256(b"imagegate-proxy-secret\n" + configured.encode()).digest()
    parts = sorted(set(material))
    if not parts:
        return secrets.token_bytes(32)
    return hashlib.sha256("\n".join(["imagegate-derived-proxy-secret", *parts]).encode()).digest()


def parse_link(
    query: Mapping[str, list[bytes]], signer: LinkSigner
) -> tuple[str, str | None, bool]:
    """The image a link's query names: its key in the cache, its upstream URL (None for an image
    kept as bytes, which is never fetched) and whether the fetch window is over.

    Raises LinkRefused for anything this gateway did not issue.
    """
    ids = query.get("id")
    if ids is not None and len(query) == 1 and len(ids) == 1:  # the common case, first
        image_id = ids[0].decode("ascii", "replace")
        if not is_image_id(image_id):
            raise LinkRefused("malformed id")
        return image_id, None, False  # a plain tuple: this is the hot path
    fields = {
        name: values[0].decode("utf-8", "replace")
        for name, values in query.items()
        if len(values) == 1
    }
    if len(fields) != len(query):
        raise LinkRefused("repeated query field")
    if set(fields) != {"u", "e", "s"}:
        raise LinkRefused("unknown link form")
    key, url, expiry = _checked_link(signer, fields["u"], fields["e"], fields["s"])
    return key, url, time.time() > expiry


@functools.lru_cache(maxsize=SIGNED_LINKS_REMEMBERED)
def _checked_link(
    signer: LinkSigner, encoded_url: str, expires: str, signature: str
) -> tuple[str, str, int]:
    """A signed link's store key, upstream URL and window end, checked once per link string
    (a link refused is checked again each time: only links the gateway signed are kept)."""
    url, expiry = signer.signed_url(encoded_url, expires, signature)
    return url_key(url), url, expiry
