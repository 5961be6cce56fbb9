"""The image cache: a byte-bounded LRU of complete images in memory, over tiers below it.

Only complete images are stored: ``CachedImage``, bytes with their type and validators. Memory
answers first; on a miss the tiers are asked in their order (the disk, ``disk.DiskTier``, then
any other), and an image found in one is promoted into memory and into the tiers above it.
``put`` stores into memory and into every tier.

A tier is one class that implements ``Tier``, in a module of its own:

* ``get(key) -> CachedImage | None``: the image, or None when absent or unusable;
* ``put(key, image) -> bool``: keep it; False when it was not kept (too large, a failed write);
* ``key in tier``: whether it holds the image, without reading it;
* ``name``, ``current_bytes`` and ``evictions``: what ``/metrics`` reports of it, as
  ``imagegate_image_<name>_cache_bytes`` and ``imagegate_image_<name>_cache_evictions``
  (``cache_metrics.py``).

Keys are lower-case hex (32 characters for an image kept as bytes, 64 for an upstream URL). Every
call is made on the IOLoop thread, and none may raise: a tier that fails answers as a miss.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import cached_property
from typing import Any, Protocol

from cachetools import LRUCache

logger = logging.getLogger(__name__)


def content_digest(data: bytes) -> str:
    """A strong digest of image bytes (128 bits of SHA-256: hardware-accelerated on most CPUs,
    and three times faster than blake2b here, which matters for images of several megabytes)."""
    return digest_text(hashlib.sha256(data).digest())


def digest_text(sha256: bytes) -> str:
    """``content_digest`` from the bytes' SHA-256 digest, when the caller has it already."""
    return sha256.hex()[:32]


@dataclass(frozen=True)
class CachedImage:
    """A complete image with its validators, computed once when it was stored."""

    data: bytes = field(repr=False)
    content_type: str
    etag: str
    last_modified: float
    # ``content_digest`` of the bytes when it is known already (empty: not known).
    digest: str = field(default="", compare=False)

    @cached_property
    def http_date(self) -> str:
        """``Last-Modified``, formatted once."""
        return formatdate(self.last_modified, usegmt=True)

    @cached_property
    def length(self) -> str:
        """``Content-Length``, formatted once."""
        return str(len(self.data))

    @cached_property
    def validator_headers(self) -> tuple[tuple[str, str], ...]:
        """``ETag`` and ``Last-Modified`` (a 304's headers), as pairs made once."""
        return (("Etag", self.etag), ("Last-Modified", self.http_date))

    @cached_property
    def content_headers(self) -> tuple[tuple[str, str], ...]:
        """``Content-Type``, the validators and ``Content-Length`` (a 200's), as pairs made once."""
        return (
            ("Content-Type", self.content_type),
            *self.validator_headers,
            ("Content-Length", self.length),
        )

    @classmethod
    def build(
        cls,
        data: bytes,
        content_type: str,
        last_modified: float | None = None,
        digest: str | None = None,
    ) -> CachedImage:
        """Wrap image bytes, with the strong ETag of the content (``digest``, its
        ``content_digest``, computed here unless the caller has it already)."""
        digest = digest or content_digest(data)
        return cls(data, content_type, f'"{digest}"', last_modified or time.time(), digest)


class EvictingLRU(LRUCache):
    """An LRUCache that reports what it evicts."""

    def __init__(self, maxsize: int, getsizeof: Any, on_evict: Any) -> None:
        super().__init__(maxsize=maxsize, getsizeof=getsizeof)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Any, Any]:
        """Evict the least recently used item, and say so."""
        key, value = super().popitem()
        self._on_evict(key, value)
        return key, value


class Tier(Protocol):
    """A store of complete images below the memory LRU (see the module's docstring)."""

    name: str
    evictions: int

    def get(self, key: str) -> CachedImage | None:
        """The image stored under ``key``, or None."""

    def put(self, key: str, image: CachedImage) -> bool:
        """Keep an image; False when it was not kept."""

    def __contains__(self, key: str) -> bool:
        """Whether an image is stored under ``key``."""

    @property
    def current_bytes(self) -> int:
        """Bytes of the images held."""


class ImageCache:
    """Memory LRU bounded by total image bytes, over the tiers below it, asked in order.

    Only complete images are ever stored. Used from the IOLoop thread only.
    """

    def __init__(
        self, max_bytes: int, max_item_bytes: int | None = None, tiers: Sequence[Tier] = ()
    ) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes or max_bytes, max_bytes)
        self.tiers = tuple(tiers)
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._lru = EvictingLRU(max_bytes, lambda image: len(image.data), self._evicted)

    def _evicted(self, key: str, image: CachedImage) -> None:
        self.evictions += 1

    def get(self, key: str) -> CachedImage | None:
        """The image stored under ``key`` (memory, then each tier), or None."""
        try:
            image = self._lru[key]  # not .get(): that looks the key up twice
        except KeyError:
            image = None
        if image is None and self.tiers:
            image = self._from_tiers(key)
        if image is None:
            self.misses += 1
        else:
            self.hits += 1
        return image

    def _from_tiers(self, key: str) -> CachedImage | None:
        """Ask each tier in turn; promote a hit into memory and into the tiers above it."""
        for depth, tier in enumerate(self.tiers):
            image = tier.get(key)
            if image is not None:
                self._remember(key, image)
                for upper in self.tiers[:depth]:
                    upper.put(key, image)
                return image
        return None

    def put(self, key: str, image: CachedImage) -> bool:
        """Store a complete image; False (and not stored) when over the per-item limit."""
        if len(image.data) > self.max_item_bytes:
            logger.info(
                "image of %d bytes not cached: over the %d-byte item limit",
                len(image.data),
                self.max_item_bytes,
            )
            return False
        self._remember(key, image)
        for tier in self.tiers:
            tier.put(key, image)
        return True

    def _remember(self, key: str, image: CachedImage) -> None:
        if len(image.data) <= self.max_item_bytes:
            self._lru[key] = image

    def __contains__(self, key: str) -> bool:
        return key in self._lru or any(key in tier for tier in self.tiers)

    @property
    def current_bytes(self) -> int:
        """Total bytes of the images held in memory."""
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)
