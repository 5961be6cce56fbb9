"""Downloading upstream images: one shared transfer per image, checked, streamed, then stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from tornado.httpclient import HTTPRequest

from tornado_imagegate import errors
from tornado_imagegate.errors import GatewayError, UpstreamError
from tornado_imagegate.images import imagetype
from tornado_imagegate.images.cache import CachedImage, ImageCache
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.upstream import (
    FetchGuard,
    OutboundProxy,
    Upstream,
    header_field,
    resolve_checked,
)
from tornado_imagegate.urlpolicy import (
    LinkRefused,
    check_fetch_url,
    is_public_address,
    url_origin,
)

if TYPE_CHECKING:
    from tornado_imagegate.images.shared import SharedTier

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
WHAT = "the image host"
USER_AGENT = "tornado-imagegate (image fetch)"
# The only answer headers the checks read (lower-cased); every other header is dropped unread.
CHECKED_HEADERS = frozenset({"content-type", "content-length", "location"})


class Transfer:
    """One upstream download that any number of readers follow while it fills the cache.

    ``ready`` resolves once the answer passed every check (status, declared type, size, and the
    type read from the first bytes): nothing is sent to a client before that. ``done`` resolves
    with the complete image, or fails; a failed transfer stores nothing.

    ``trusted``: the URL came from a provider's answer (or a link the gateway signed for one),
    so a hop to a configured provider's own origin is made as the provider call is.
    """

    def __init__(
        self, key: str, url: str, max_bytes: int, timeout: float, trusted: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        self.key = key
        self.url = url
        self.trusted = trusted
        self.max_bytes = max_bytes
        # A loop time: the download, every redirect included, succeeds or fails by then.
        self.deadline = loop.time() + timeout
        self.chunks: list[bytes] = []
        self.received = 0
        self.content_type: str | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[CachedImage] = loop.create_future()
        for future in (self.ready, self.done):
            future.add_done_callback(_mark_retrieved)
        self._changed = asyncio.Event()
        self.guard = FetchGuard()
        # Whether a failure may pass if the image is fetched again later (timeout, reset, 5xx).
        self.failure_transient = False
        # Who asked for it (each ``ImageFetcher.transfer`` call); those that may stop waiting
        # say so with ``ImageFetcher.leave``, and the last one to leave stops the download.
        self.followers = 0
        self.task: asyncio.Task | None = None
        self._reset_hop()

    def _reset_hop(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.accepting = False
        self.refusal: UpstreamError | None = None

    # --- curl callbacks (plain functions, run on the IOLoop, never raising) ---

    def on_header(self, raw: bytes) -> None:
        """Parse the answer's status and headers; decide at their end whether to accept it."""
        line = raw.decode("latin-1")
        if line.startswith("HTTP/"):
            self._reset_hop()
            parts = line.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        elif line.strip():
            checked = header_field(line, CHECKED_HEADERS)
            if checked is not None:
                name, value = checked
                earlier = self.headers.get(name)  # a repeated header is read as one list
                self.headers[name] = f"{earlier},{value}" if earlier is not None else value
        else:
            self._check_headers()

    def _check_headers(self) -> None:
        if self.status is None or 300 <= self.status < 400 or self.status == 100:
            return
        if self.status != 200:
            self._refuse(UpstreamError("status", f"HTTP {self.status}", status=self.status))
            return
        declared = self.headers.get("content-type")
        if not imagetype.is_acceptable_declared(declared):
            shown = imagetype.declared_type(declared)[:60]
            self._refuse(UpstreamError("bad_answer", f"content type {shown!r} is not an image"))
            return
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            self._refuse(UpstreamError("too_large", f"declared {length} bytes"))
            return
        self.accepting = True

    def on_chunk(self, chunk: bytes) -> None:
        """Keep a body chunk of an accepted answer and wake the readers."""
        if not self.accepting or self.refusal is not None:
            return
        self.received += len(chunk)
        if self.received > self.max_bytes:
            self._refuse(UpstreamError("too_large", f"over {self.max_bytes} bytes"))
            return
        self.chunks.append(chunk)
        if self.content_type is None and self.received >= imagetype.SNIFF_BYTES:
            self.check_type()
        self._wake()

    def check_type(self) -> None:
        """Read the type from the first bytes; refuse the answer if it is not a raster image."""
        head = b"".join(self.chunks)[: imagetype.SNIFF_BYTES]
        content_type = imagetype.sniff(head)
        if content_type is None:
            self._refuse(UpstreamError("bad_answer", "the body is not a raster image"))
            return
        self.content_type = content_type
        if not self.ready.done():
            self.ready.set_result(None)

    def _refuse(self, error: UpstreamError) -> None:
        self.refusal = error
        self.accepting = False
        self.guard.abort(error.kind)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- outcome ---

    def finish(self, image: CachedImage) -> None:
        """The whole image arrived."""
        if not self.ready.done():
            self.ready.set_result(None)
        self.done.set_result(image)
        self._wake()

    def fail(self, error: GatewayError, transient: bool = False) -> None:
        """The transfer failed; readers get ``error`` (or a cut connection once streaming)."""
        self.failure_transient = transient
        for future in (self.ready, self.done):
            if not future.done():
                future.set_exception(error)
        self.chunks = []
        self._wake()

    async def stream(self) -> AsyncIterator[bytes]:
        """Every chunk in order, as it arrives; raises if the transfer fails part-way."""
        index = 0
        while True:
            if index < len(self.chunks):
                index += 1
                yield self.chunks[index - 1]
                continue
            if self.done.done():
                self.done.result()
                return
            await self._changed.wait()


def is_transient(error: UpstreamError) -> bool:
    """Whether a failed download may succeed later: a timeout, a reset, a 5xx, 408 or 429.

    A refused address, a 4xx, an answer that is not an image or one too large is definitive.
    """
    if error.kind in ("timeout", "connect", "cancelled"):
        return True
    status = error.status or 0
    return error.kind == "status" and (status >= 500 or status in (408, 429))


def _mark_retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class ImageFetcher:
    """Starts transfers, one per image at a time (single-flight), and stores what completes."""

    def __init__(
        self,
        upstream: Upstream,
        cache: ImageCache,
        *,
        timeout: float,
        max_bytes: int,
        allow_private: bool,
        trusted_origins: frozenset[str] = frozenset(),
        address_allowed: Callable[[str], bool] = is_public_address,
        metrics: Metrics | None = None,
        proxy: str = "",
        shared: SharedTier | None = None,
    ) -> None:
        self.upstream = upstream
        # With REDIS_URL: every completed image is stored there before its waiters hear of it.
        self.shared = shared
        # IMAGE_FETCH_PROXY; never UPSTREAM_PROXY, never the environment's proxy variables.
        self.proxy = OutboundProxy.from_url(proxy) if proxy else None
        self.cache = cache
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        # The configured providers' origins (``url_origin``): a trusted transfer's hop there
        # is not filtered, as the provider call itself is not.
        self.trusted_origins = trusted_origins
        self.address_allowed = address_allowed
        self.metrics = metrics
        self.inflight: dict[str, Transfer] = {}
        self.started = 0
        self._tasks: set[asyncio.Task] = set()

    def transfer(
        self, key: str, url: str, lock: str | None = None, trusted: bool = False
    ) -> Transfer:
        """The running transfer of this image, or a new one.

        ``lock`` is the token of the shared tier's fetch lock this instance holds for the image:
        given back once the image is stored there (or the fetch failed). ``trusted``: ``url``
        came from a provider (never from a client), so its provider's origin may be reached.
        """
        transfer = self.inflight.get(key)
        if transfer is None:
            transfer = Transfer(key, url, self.max_bytes, self.timeout, trusted)
            self.inflight[key] = transfer
            self.started += 1
            task = asyncio.ensure_future(self._run(transfer, lock))
            transfer.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        transfer.followers += 1
        return transfer

    def leave(self, transfer: Transfer) -> None:
        """One who asked for ``transfer`` stops waiting; if no one else follows it, it stops."""
        transfer.followers -= 1
        if transfer.followers <= 0 and not transfer.done.done() and transfer.task is not None:
            logger.info("image fetch abandoned: no one waits for it any more")
            transfer.task.cancel()

    async def _run(self, transfer: Transfer, lock: str | None = None) -> None:
        try:
            await self._run_download(transfer)
        finally:
            if lock is not None and self.shared is not None:
                failure = transfer.done.exception() if transfer.done.done() else None
                await self.shared.unlock(
                    transfer.key, lock, failure if isinstance(failure, GatewayError) else None
                )

    async def _run_download(self, transfer: Transfer) -> None:
        started = asyncio.get_running_loop().time()
        try:
            image = await self._download(transfer)
        except UpstreamError as exc:
            logger.warning("image fetch failed: %s", exc.detail or exc.kind)
            transfer.fail(errors.from_upstream(exc, WHAT), transient=is_transient(exc))
        except LinkRefused as exc:
            logger.warning("image fetch refused: %s", exc)
            transfer.fail(errors.from_upstream(UpstreamError("refused_address", str(exc)), WHAT))
        except asyncio.CancelledError:
            abandoned = UpstreamError("cancelled", "abandoned")
            transfer.fail(errors.from_upstream(abandoned, WHAT), transient=True)
            raise
        except Exception:
            logger.exception("image fetch crashed")
            transfer.fail(errors.from_status(500), transient=True)
        else:
            if self.metrics is not None:
                elapsed = asyncio.get_running_loop().time() - started
                self.metrics.observe_stage("image_fetch", elapsed)
            self.cache.put(transfer.key, image)
            if self.shared is not None:
                await self.shared.put(transfer.key, image)
            transfer.finish(image)
        finally:
            self.inflight.pop(transfer.key, None)

    async def _download(self, transfer: Transfer) -> CachedImage:
        deadline = transfer.deadline
        url = transfer.url
        for _hop in range(MAX_REDIRECTS + 1):
            check_fetch_url(url)
            if transfer.trusted and url_origin(url) in self.trusted_origins:
                # A provider's own origin (each hop is checked: a redirect elsewhere is
                # filtered again) is reached as the provider call is: unfiltered, and through
                # UPSTREAM_PROXY if that is set, never IMAGE_FETCH_PROXY.
                guard = FetchGuard(
                    allow_private=True,
                    max_bytes=self.max_bytes,
                    header_function=transfer.on_header,
                    write_function=transfer.on_chunk,
                    configured_service=True,
                )
            else:
                guard = await self._filtered_guard(transfer, url, deadline)
            transfer.guard = guard
            request = HTTPRequest(
                url,
                method="GET",
                headers={"Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8"},
                user_agent=USER_AGENT,
                follow_redirects=False,
                decompress_response=True,
            )
            try:
                response = await self.upstream.fetch(request, deadline, guard)
            except UpstreamError:
                if transfer.refusal is not None:
                    raise transfer.refusal from None
                raise
            if transfer.refusal is not None:
                raise transfer.refusal
            location = transfer.headers.get("location")
            if 300 <= response.code < 400 and location:
                url = urljoin(url, location)
                continue
            if response.code != 200:
                raise UpstreamError("status", f"HTTP {response.code}", status=response.code)
            if transfer.content_type is None:
                transfer.check_type()
                if transfer.refusal is not None:
                    raise transfer.refusal
            data = b"".join(transfer.chunks)
            return CachedImage.build(data, transfer.content_type or "application/octet-stream")
        raise UpstreamError("bad_answer", f"more than {MAX_REDIRECTS} redirects")

    async def _filtered_guard(self, transfer: Transfer, url: str, deadline: float) -> FetchGuard:
        """The guard of a hop to any host but a provider's own: the address filter (unless
        IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS) and IMAGE_FETCH_PROXY if set."""
        pinned = None
        if self.proxy is not None and not self.allow_private:
            # Through a proxy the socket filter would see only the proxy: every address of
            # the host is checked here instead, on every hop, and the transfer pinned.
            try:
                async with asyncio.timeout_at(deadline):
                    pinned = await resolve_checked(url, self.address_allowed)
            except TimeoutError:
                raise UpstreamError("timeout", "the host did not resolve in time") from None
        return FetchGuard(
            allow_private=self.allow_private,
            max_bytes=self.max_bytes,
            address_allowed=self.address_allowed,
            header_function=transfer.on_header,
            write_function=transfer.on_chunk,
            configured_service=False,
            proxy=self.proxy,
            pinned_address=pinned,
        )
