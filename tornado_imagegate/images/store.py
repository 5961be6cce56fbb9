"""Keeping images: store what providers return and hand out the gateway's own lasting links.

``ImageStore`` is the image subsystem's one interface to the rest of the gateway. The generation
pipeline keeps images (``keep_bytes``, ``keep_url``) and reads them back (``image_of``); the
``/image-proxy`` handler asks ``find`` what a link names and gets ``(image, arrival)``: a
complete image (``ServedImage``) to send at once, or one still arriving from its upstream
(``Arrival``) to stream. The handler knows these two types and nothing of the cache, the tiers or
transfers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from tornado_imagegate.errors import NO_RETRY, GatewayError
from tornado_imagegate.images import imagetype
from tornado_imagegate.images.cache import CachedImage, ImageCache
from tornado_imagegate.images.fetch import ImageFetcher
from tornado_imagegate.images.links import LinkSigner, image_link, parse_link, signed_link, url_key
from tornado_imagegate.urlpolicy import LinkRefused, check_fetch_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptImage:
    """An image the gateway keeps: its absolute link, and its key in the cache."""

    link: str
    key: str


class ServedImage(Protocol):
    """A complete image as the proxy sends it: bytes, type, and validators formatted once."""

    data: bytes
    content_type: str
    etag: str

    @property
    def http_date(self) -> str:
        """``Last-Modified``."""

    @property
    def length(self) -> str:
        """``Content-Length``."""


class Arrival(Protocol):
    """An image still arriving from its upstream; it fills the cache for later requests.

    ``ready`` resolves once the answer passed every check (nothing may be sent before), or fails
    with a GatewayError; ``done`` resolves with the complete image. ``stream`` yields its bytes
    as they arrive, and raises a GatewayError if the download fails part-way.
    """

    content_type: str | None
    ready: asyncio.Future[None]
    done: asyncio.Future[ServedImage]

    def stream(self) -> AsyncIterator[bytes]:
        """Every chunk in order, as it arrives."""


# What a link names: (image, None) to send at once, or (None, arrival) to stream.
Found: TypeAlias = tuple[ServedImage | None, Arrival | None]


def unusable_image_url(reason: str) -> GatewayError:
    """502 for a provider image URL the gateway may not fetch; the reason goes to the log only."""
    return GatewayError(
        502,
        "upstream_error",
        "The provider returned an image URL the gateway may not fetch.",
        detail=reason,
        headers=NO_RETRY,
    )


def forbidden_link(reason: str) -> GatewayError:
    """403 for any link this gateway did not issue; the reason goes to the log only."""
    return GatewayError(
        403, "forbidden_image_link", "This link was not issued by this gateway.", detail=reason
    )


class ImageStore:
    """The image cache, the fetcher and the link signer behind one interface."""

    def __init__(self, cache: ImageCache, fetcher: ImageFetcher, signer: LinkSigner) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.signer = signer

    def keep_bytes(self, data: bytes, base_url: str) -> KeptImage:
        """Store image bytes a provider returned; return the absolute link that serves them."""
        content_type = imagetype.sniff(data[: imagetype.SNIFF_BYTES])
        if content_type is None:
            raise GatewayError(
                502,
                "upstream_error",
                "The provider answered with something that is not an image.",
                headers=NO_RETRY,
            )
        image_id = self.signer.image_id(data)
        if not self.cache.put(image_id, CachedImage.build(data, content_type)):
            logger.warning(
                "a %d-byte image is over the cache's item limit: its link will 404", len(data)
            )
        return KeptImage(image_link(base_url, image_id), image_id)

    async def keep_url(
        self,
        url: str,
        base_url: str,
        required: bool = False,
        deadline: float | None = None,
    ) -> KeptImage:
        """Fetch an upstream image now, so its link outlives the upstream's; return our link.

        A definitive failure (an address the filter refuses, a 4xx, an answer that is not an
        image or is too large) raises 502: the link could never work. A transient one (timeout,
        reset, 5xx, or ``deadline``, a loop time, passing first) still returns the signed link,
        which fetches on demand for as long as the upstream link lives; with ``required`` any
        failure raises. The shared download goes on when this caller stops waiting for it.
        """
        try:
            check_fetch_url(url)
        except LinkRefused as exc:
            raise unusable_image_url(str(exc)) from None
        key = url_key(url)
        if key not in self.cache:
            transfer = self.fetcher.transfer(key, url)
            try:
                # Shielded: one waiter leaving (a client hanging up) must never cancel a
                # download that other requests for the same image are waiting for.
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(transfer.done)
            except TimeoutError:
                if required:
                    raise GatewayError(
                        504,
                        "upstream_timeout",
                        "The provider's image did not download in time.",
                        headers=NO_RETRY,
                    ) from None
                logger.warning("a provider image is still downloading; its link will wait for it")
            except GatewayError as exc:
                if required or not transfer.failure_transient:
                    raise GatewayError(
                        502,
                        "upstream_error",
                        "The provider's image could not be downloaded: "
                        f"{exc.message[:1].lower()}{exc.message[1:]}",
                        detail=exc.detail,
                        headers=NO_RETRY,
                    ) from None
                logger.warning(
                    "could not keep a provider image now (%s); its link will fetch on demand",
                    exc.message,
                )
        return KeptImage(signed_link(base_url, self.signer, url), key)

    def image_of(self, kept: KeptImage) -> CachedImage:
        """The bytes of a kept image (502 if a provider's image could not be downloaded)."""
        image = self.cache.get(kept.key)
        if image is None:
            raise GatewayError(
                502,
                "upstream_error",
                "The provider's image could not be downloaded.",
                headers=NO_RETRY,
            )
        return image

    def find(self, query: Mapping[str, list[bytes]]) -> Found:
        """The image a link's query names: kept, or fetched from its signed upstream URL.

        403 for anything the gateway did not issue (no upstream request is made), 404 for an
        image no longer kept, 403 for a signed link past its fetch window whose image is gone.
        """
        try:
            key, url, expired = parse_link(query, self.signer)
        except LinkRefused as exc:
            raise forbidden_link(str(exc)) from None
        image = self.cache.get(key)
        if image is not None:
            return image, None
        if url is None:
            raise GatewayError(
                404, "image_not_found", "This image is no longer kept by the gateway."
            )
        if expired:
            raise GatewayError(
                403,
                "expired_image_link",
                "This image is no longer kept and its link is too old to fetch it again.",
            )
        return None, self.fetcher.transfer(key, url)
