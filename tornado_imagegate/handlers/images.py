"""``GET /image-proxy``: serve an image the gateway keeps, only through a link it issued."""

from __future__ import annotations

from email.utils import formatdate

from tornado_imagegate import errors
from tornado_imagegate.handlers.base import BaseHandler
from tornado_imagegate.imagecache import CachedImage, ImageCache
from tornado_imagegate.urlpolicy import is_image_id

IMAGE_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
IMMUTABLE = "public, max-age=31536000, immutable"


class ImageProxyHandler(BaseHandler):
    """Serves kept images by their unforgeable id; anything else is 403 and fetches nothing."""

    def initialize(self, cache: ImageCache) -> None:
        """Take the image cache from the route table."""
        self.cache = cache

    def compute_etag(self) -> None:
        """No per-request hashing: images carry the ETag computed when they were stored."""
        return None

    def get(self) -> None:
        """Send the image, or 304 when the client's copy is current."""
        self.send_image(self.lookup(), include_body=True)

    def head(self) -> None:
        """Send the image's headers only."""
        self.send_image(self.lookup(), include_body=False)

    def lookup(self) -> CachedImage:
        """The image named by ``?id=``: 403 for anything not issued here, 404 when it is gone."""
        image_id = self.get_query_argument("id", "")
        if not is_image_id(image_id) or len(self.request.query_arguments) != 1:
            raise errors.GatewayError(
                403,
                "forbidden_image_link",
                "This link was not issued by this gateway.",
            )
        image = self.cache.get(image_id)
        if image is None:
            raise errors.GatewayError(
                404, "image_not_found", "This image is no longer kept by the gateway."
            )
        return image

    def send_image(self, image: CachedImage, include_body: bool) -> None:
        """Write the allow-listed headers, then the bytes (or 304)."""
        self.set_header("ETag", image.etag)
        self.set_header("Cache-Control", IMMUTABLE)
        self.set_header("Last-Modified", formatdate(image.last_modified, usegmt=True))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", IMAGE_CSP)
        if image.etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", image.content_type)
        self.set_header("Content-Length", len(image.data))
        self.finish(image.data if include_body else None)
