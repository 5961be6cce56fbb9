"""``GET /image-proxy``: serve an image the gateway keeps, only through a link it issued."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from tornado.iostream import StreamClosedError

from tornado_imagegate.errors import GatewayError
from tornado_imagegate.handlers.base import BaseHandler
from tornado_imagegate.images.store import Arrival, ImageStore, ServedImage

logger = logging.getLogger(__name__)

IMAGE_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
IMMUTABLE = "public, max-age=31536000, immutable"
# Every image answer's own policy, beside the image's type, validators and length.
POLICY_HEADERS = (
    ("Cache-Control", IMMUTABLE),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", IMAGE_CSP),
)


class ImageProxyHandler(BaseHandler):
    """Serves kept images from memory, disk or Redis, and streams first fetches as they arrive."""

    def initialize(self, store: ImageStore) -> None:
        """Take the image store from the route table."""
        self.store = store

    def compute_etag(self) -> None:
        """No per-request hashing: kept images carry the ETag computed when they were stored."""
        return None

    def prepare(self) -> None:
        """Count only the requests that wait (a first fetch, HEAD): a cache hit is answered
        before anything else runs, so a shutdown can never find it in flight."""

    def set_default_headers(self) -> None:
        """Only what an image answer needs: the request id and, for canvas use, CORS."""
        if "*" in self.config.cors_allow_origins:
            # The hot path: the headers put as they are (the id is well-formed, see request_id).
            headers = self._headers
            del headers["Server"]
            headers["X-Request-Id"] = self.request_id
            headers["Access-Control-Allow-Origin"] = "*"
        else:
            super().set_default_headers()

    def get(self) -> Awaitable[None] | None:
        """Send the image (304 when the client's copy is current); a first fetch streams."""
        image, arrival = self.store.find(self.request.query_arguments)
        if image is not None:  # the hot path: no coroutine
            self.send_image(image, include_body=True)
            return None
        return self.stream_arrival(arrival)

    async def head(self) -> None:
        """Send the image's headers only."""
        image, arrival = self.store.find(self.request.query_arguments)
        if image is None:
            self.count_in_flight()
            image = await arrival.done
        self.send_image(image, include_body=False)

    def set_image_headers(self, content_type: str) -> None:
        """The allow-listed headers of every image answer; nothing is copied from upstream."""
        self.set_header("Content-Type", content_type)
        self.put_headers(POLICY_HEADERS)

    def put_headers(self, pairs: tuple[tuple[str, str], ...]) -> None:
        """Set headers made once and checked then (an image's, the policy's), without checking
        and converting each again as ``set_header`` does: this is the cache hit's hot path."""
        headers = self._headers
        for name, value in pairs:
            headers[name] = value

    def send_image(self, image: ServedImage, include_body: bool) -> None:
        """Answer from a complete image: validators, length, then the bytes (or 304)."""
        if_none_match = ",".join(self.request.headers.get_list("If-None-Match"))  # as request_id
        if if_none_match and (image.etag in if_none_match or if_none_match.strip() == "*"):
            self.put_headers(POLICY_HEADERS)
            self.put_headers(image.validator_headers)
            self.clear_header("Content-Type")
            self.set_status(304)
            self.finish()
            return
        self.put_headers(image.content_headers)
        self.put_headers(POLICY_HEADERS)
        self.finish(image.data if include_body else None)

    async def stream_arrival(self, arrival: Arrival) -> None:
        """Stream a first fetch as it arrives, once every check on it has passed."""
        self.count_in_flight()
        await arrival.ready  # raises the download's error before anything is sent
        if arrival.done.done():  # complete already (found in the shared tier): validators too
            self.send_image(arrival.done.result(), include_body=True)
            return
        self.set_image_headers(arrival.content_type or "application/octet-stream")
        try:
            async for chunk in arrival.stream():
                self.write(chunk)
                await self.flush()
        except GatewayError as exc:
            # Headers are gone: cut the connection so the client sees an incomplete answer,
            # never a complete-looking one.
            logger.warning("image stream cut: %s", exc.message)
            self.request.connection.close()
            return
        except StreamClosedError:
            return  # the client left; the download goes on and fills the cache for others
        self.finish()
