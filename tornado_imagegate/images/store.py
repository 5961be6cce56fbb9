"""Keeping images: store what providers return and hand out the gateway's own lasting links.

``ImageStore`` is the image subsystem's one interface to the rest of the gateway. The generation
pipeline keeps images (``keep_bytes``, ``keep_url``) and reads them back (``image_of``); the
``/image-proxy`` handler asks ``find`` what a link names and gets ``(image, arrival)``: a
complete image (``ServedImage``) to send at once, or one still arriving from its upstream
(``Arrival``) to stream. The handler knows these two types and nothing of the cache, the tiers or
transfers.

With a shared tier (``REDIS_URL``), a local miss becomes an arrival that looks in Redis, and
fetches a signed link's image only if no instance has it or is fetching it (single-flight across
instances); kept images are in Redis before their link is handed out. A memory hit never waits.

URLs from a provider's answer and from the gateway's signed links are fetched as trusted: a
configured provider's own origin is reached as the provider is. A client's URL (``fetch_image``)
never is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from tornado_imagegate.errors import NO_RETRY, GatewayError
from tornado_imagegate.images import imagetype
from tornado_imagegate.images.cache import CachedImage, ImageCache, digest_text
from tornado_imagegate.images.fetch import ImageFetcher, Transfer
from tornado_imagegate.images.links import LinkSigner, image_link, parse_link, signed_link, url_key
from tornado_imagegate.images.shared import SharedLookup, SharedTier
from tornado_imagegate.redis_link import SharedUnavailable
from tornado_imagegate.urlpolicy import LinkRefused, check_fetch_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeptImage:
    """An image the gateway keeps: its absolute link, and its key in the cache."""

    link: str
    key: str
    # The image as base64 text, when the provider sent it so (an Images API answer sends it on).
    encoded: str | None = field(default=None, repr=False, compare=False)


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

    @property
    def validator_headers(self) -> tuple[tuple[str, str], ...]:
        """``ETag`` and ``Last-Modified``, as header pairs."""

    @property
    def content_headers(self) -> tuple[tuple[str, str], ...]:
        """``Content-Type``, the validators and ``Content-Length``, as header pairs."""


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

# How long an unreachable shared store asks clients to wait before asking again.
STORAGE_RETRY_SECONDS = 5
# The fetch lock outlives the fetch's own deadline by this much (storing it in Redis included).
LOCK_SLACK_SECONDS = 5.0
# A caller's deadline this much past a download's own needs no timer: the download ends first.
OUTLIVED_SLACK_SECONDS = 1.0


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


def storage_unavailable() -> GatewayError:
    """503: the image may be held only by the shared store, which cannot be reached now."""
    return GatewayError(
        503,
        "storage_unavailable",
        "This image is not held by this instance and the shared image store is unreachable; "
        f"try again in {STORAGE_RETRY_SECONDS}s.",
        headers={"Retry-After": str(STORAGE_RETRY_SECONDS)},
    )


def image_gone() -> GatewayError:
    """404: no tier holds the image any more."""
    return GatewayError(404, "image_not_found", "This image is no longer kept by the gateway.")


def link_too_old() -> GatewayError:
    """403: the image is gone and the link's fetch window is over."""
    return GatewayError(
        403,
        "expired_image_link",
        "This image is no longer kept and its link is too old to fetch it again.",
    )


class ImageStore:
    """The image cache, the fetcher and the link signer behind one interface.

    ``shared``, when set, is the Redis tier every instance reads and writes.
    """

    def __init__(
        self,
        cache: ImageCache,
        fetcher: ImageFetcher,
        signer: LinkSigner,
        shared: SharedTier | None = None,
    ) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.signer = signer
        self.shared = shared
        self._lookups: dict[tuple[str, bool], SharedLookup] = {}

    def keep_bytes(self, data: bytes, base_url: str, encoded: str | None = None) -> KeptImage:
        """Store image bytes a provider returned; return the absolute link that serves them
        (and ``encoded``, the base64 text the bytes came as, if they came so)."""
        content_type = imagetype.sniff(data[: imagetype.SNIFF_BYTES])
        if content_type is None:
            raise GatewayError(
                502,
                "upstream_error",
                "The provider answered with something that is not an image.",
                headers=NO_RETRY,
            )
        sha256 = hashlib.sha256(data).digest()  # once: it makes both the id and the ETag
        image_id = self.signer.image_id_of_digest(sha256)
        image = CachedImage.build(data, content_type, digest=digest_text(sha256))
        if not self.cache.put(image_id, image):
            logger.warning(
                "a %d-byte image is over the cache's item limit: its link will 404", len(data)
            )
        return KeptImage(image_link(base_url, image_id), image_id, encoded)

    async def keep_bytes_shared(
        self, data: bytes, base_url: str, encoded: str | None = None
    ) -> KeptImage:
        """``keep_bytes``, and with a shared tier the image stored there before the link is
        returned: a client may ask another instance for it at once. Redis unreachable, the
        image is kept here only."""
        kept = self.keep_bytes(data, base_url, encoded)
        if self.shared is not None:
            image = self.cache.get(kept.key)
            if image is not None:
                await self.shared.put(kept.key, image)
        return kept

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
            transfer: Transfer | None = None
            try:
                # Shielded: one waiter leaving (a client hanging up) must never cancel a
                # download that other requests for the same image are waiting for.
                if self.shared is None:
                    transfer = self.fetcher.transfer(key, url, trusted=True)
                    if deadline is None or deadline > transfer.deadline + OUTLIVED_SLACK_SECONDS:
                        # The download ends by itself before ``deadline``: no timer to arm.
                        await asyncio.shield(transfer.done)
                    else:
                        async with asyncio.timeout_at(deadline):
                            await asyncio.shield(transfer.done)
                else:
                    async with asyncio.timeout_at(deadline):
                        found = await asyncio.shield(self._obtain(self.shared, key, url))
                        transfer = found if isinstance(found, Transfer) else None
                        if transfer is not None:
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
                # Another instance's failed fetch, heard through Redis: it may pass later.
                transient = transfer.failure_transient if transfer is not None else True
                if required or not transient:
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

    async def load_link(self, query: Mapping[str, list[bytes]]) -> ServedImage:
        """The image one of the gateway's own links names, read from the store: no HTTP request
        to the gateway itself. Raises ``find``'s errors."""
        image, arrival = self.find(query)
        if image is not None:
            return image
        if arrival is None:  # find gives one or the other
            raise image_gone()
        return await asyncio.shield(arrival.done)

    async def fetch_image(self, url: str) -> ServedImage:
        """An image at an outside http(s) URL, fetched through the guarded fetcher (its address
        filter, size limit and type checks) and kept like a provider's image.

        Cancelled (its client left, its deadline passed), the download stops unless another
        request follows it.
        """
        try:
            check_fetch_url(url)
        except LinkRefused as exc:
            raise forbidden_link(str(exc)) from None
        key = url_key(url)
        image = self.cache.get(key)
        if image is not None:
            return image
        # Shielded: another request may be waiting for the same download.
        transfer = self.fetcher.transfer(key, url)
        try:
            return await asyncio.shield(transfer.done)
        except asyncio.CancelledError:
            self.fetcher.leave(transfer)
            raise

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
        if self.shared is not None:
            return None, self._look_up(self.shared, key, url, expired)
        if url is None:
            raise image_gone()
        if expired:
            raise link_too_old()
        return None, self.fetcher.transfer(key, url, trusted=True)

    def _look_up(self, shared: SharedTier, key: str, url: str | None, expired: bool) -> Arrival:
        """A local miss with a shared tier: the transfer under way here, or one lookup in Redis
        that every request for the same image here follows."""
        transfer = self.fetcher.inflight.get(key)
        if transfer is not None:
            return transfer
        lookup = self._lookups.get((key, expired))
        if lookup is None:
            lookup = SharedLookup(self._from_shared(shared, key, url, expired))
            self._lookups[(key, expired)] = lookup
            lookup.task.add_done_callback(lambda _: self._lookups.pop((key, expired), None))
        return lookup

    async def _from_shared(
        self, shared: SharedTier, key: str, url: str | None, expired: bool
    ) -> CachedImage | Transfer:
        """The image from Redis, or fetched once for every instance; Redis unreachable, a signed
        link within its window is fetched here and any other answers 503."""
        try:
            image = await shared.get(key)
        except SharedUnavailable:
            if url is None or expired:
                raise storage_unavailable() from None
            return self.fetcher.transfer(key, url, trusted=True)
        if image is not None:
            self.cache.put(key, image)
            return image
        if url is None:
            raise image_gone()
        if expired:
            raise link_too_old()
        return await self._obtain(shared, key, url)

    async def _obtain(self, shared: SharedTier, key: str, url: str) -> CachedImage | Transfer:
        """An upstream image for every instance: from Redis, from the transfer this instance
        runs, or fetched here under the fetch lock while the other instances wait for it.

        A lock whose holder died expires, and a waiter takes it over.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fetcher.timeout + LOCK_SLACK_SECONDS
        try:
            while True:
                transfer = self.fetcher.inflight.get(key)
                if transfer is not None:
                    return transfer
                image = await shared.get(key)
                if image is None:
                    token = await shared.lock(key, self.fetcher.timeout + LOCK_SLACK_SECONDS)
                    if token is None:
                        image = await shared.wait_for(key, deadline)
                    else:
                        # Stored, or started here, between the first look and the lock.
                        image = await shared.get(key)
                        if image is None and key not in self.fetcher.inflight:
                            return self.fetcher.transfer(key, url, lock=token, trusted=True)
                        await shared.unlock(key, token)
                if image is not None:
                    self.cache.put(key, image)
                    return image
                if loop.time() >= deadline:
                    raise GatewayError(
                        504,
                        "upstream_timeout",
                        "The image host did not answer in time.",
                        headers=NO_RETRY,
                    )
        except SharedUnavailable:
            return self.fetcher.transfer(key, url, trusted=True)
