"""The gateway's image store: a byte-bounded LRU of complete images."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from cachetools import LRUCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedImage:
    """A complete image with the validators computed once, when it was stored."""

    data: bytes = field(repr=False)
    content_type: str
    etag: str
    last_modified: float

    @classmethod
    def build(
        cls, data: bytes, content_type: str, last_modified: float | None = None
    ) -> CachedImage:
        """Wrap image bytes, computing the strong ETag from the content."""
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return cls(data, content_type, f'"{digest}"', last_modified or time.time())


class ImageCache:
    """An LRU bounded by the total bytes of its images; used from the IOLoop thread only."""

    def __init__(self, max_bytes: int, max_item_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes or max_bytes, max_bytes)
        self._lru: LRUCache[str, CachedImage] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda image: len(image.data)
        )

    def get(self, key: str) -> CachedImage | None:
        """The image stored under ``key``, or None; a hit makes it the most recently used."""
        return self._lru.get(key)

    def put(self, key: str, image: CachedImage) -> bool:
        """Store ``image``; an image over the per-item limit is not stored and False is returned."""
        if len(image.data) > self.max_item_bytes:
            logger.info(
                "image of %d bytes not cached: over the %d-byte item limit",
                len(image.data),
                self.max_item_bytes,
            )
            return False
        self._lru[key] = image
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._lru

    @property
    def current_bytes(self) -> int:
        """Total bytes of the images held."""
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)
