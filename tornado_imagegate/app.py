"""make_app(): the one route table."""

from __future__ import annotations

import os

from tornado.web import Application

from tornado_imagegate.config import Settings
from tornado_imagegate.generation import ImageService
from tornado_imagegate.handlers.base import NotFoundHandler, StaticHandler
from tornado_imagegate.handlers.chat import ChatCompletionsHandler
from tornado_imagegate.handlers.image_proxy import ImageProxyHandler
from tornado_imagegate.handlers.images_api import ImagesGenerationsHandler
from tornado_imagegate.handlers.meta import (
    HealthHandler,
    MetricsHandler,
    ModelsHandler,
    OpenApiHandler,
    ReadyHandler,
    WelcomeHandler,
)
from tornado_imagegate.images.cache import ImageCache, Tier
from tornado_imagegate.images.cache_metrics import CacheCollector
from tornado_imagegate.images.disk import DiskTier
from tornado_imagegate.images.fetch import ImageFetcher
from tornado_imagegate.images.links import LinkSigner, derive_secret
from tornado_imagegate.images.store import ImageStore
from tornado_imagegate.lifecycle import Lifecycle
from tornado_imagegate.logsafe import log_request
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.upstream import Upstream


def find_static_dir() -> str:
    """The welcome page's files: packaged beside the modules, or ``static/`` of a checkout."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(package_dir, "static")
    if os.path.isfile(os.path.join(packaged, "index.html")):
        return packaged
    return os.path.join(os.path.dirname(package_dir), "static")


STATIC_DIR = find_static_dir()


def make_store(
    settings: Settings, upstream: Upstream | None = None, metrics: Metrics | None = None
) -> ImageStore:
    """The image store: memory LRU, the tiers below it, fetcher and link signer."""
    tiers: list[Tier] = []
    if settings.image_cache_dir:
        tiers.append(DiskTier(settings.image_cache_dir, settings.image_cache_dir_max_bytes))
    cache = ImageCache(settings.image_cache_max_bytes, settings.image_max_bytes, tiers)
    fetcher = ImageFetcher(
        upstream or Upstream(proxy=settings.upstream_proxy),
        cache,
        timeout=settings.image_fetch_timeout,
        max_bytes=settings.image_max_bytes,
        allow_private=settings.image_proxy_allow_private_networks,
        metrics=metrics,
        proxy=settings.image_fetch_proxy,
    )
    secret = derive_secret(settings.image_proxy_secret, settings.secret_material())
    return ImageStore(cache, fetcher, LinkSigner(secret))


def make_app(settings: Settings, store: ImageStore | None = None) -> Application:
    """Build the Tornado application with its services: the one route table."""
    upstream = Upstream(proxy=settings.upstream_proxy)
    metrics = Metrics()
    store = store or make_store(settings, upstream, metrics)
    metrics.watch(CacheCollector(store.cache))
    service = ImageService(settings, store, upstream, metrics)
    # The /v1 prefix is optional: some clients are given the bare origin as their base URL.
    routes = [
        # First: the most requested path (every chat client re-fetches its images).
        (r"/image-proxy", ImageProxyHandler, {"store": store}),
        (r"/", WelcomeHandler),
        (r"/(?:v1/)?health/?", HealthHandler),
        (r"/ready/?", ReadyHandler),
        (r"/metrics/?", MetricsHandler),
        (r"/openapi\.json", OpenApiHandler),
        (r"/(?:v1/)?models/?", ModelsHandler),
        (r"/(?:v1/)?chat/completions/?", ChatCompletionsHandler, {"service": service}),
        (r"/(?:v1/)?images/generations/?", ImagesGenerationsHandler, {"service": service}),
        (r"/static/(.+)", StaticHandler, {"path": STATIC_DIR}),
    ]
    return Application(
        routes,
        imagegate=settings,
        image_service=service,
        image_store=store,
        metrics=metrics,
        lifecycle=Lifecycle(),
        template_path=STATIC_DIR,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
        xsrf_cookies=False,
    )
