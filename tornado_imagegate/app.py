"""make_app(): the services, and the one route table that hands them to the handlers."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from typing import Any

from tornado.web import Application, RequestHandler

from tornado_imagegate.config import Settings
from tornado_imagegate.generation import ImageService
from tornado_imagegate.handlers.base import NotFoundHandler, StaticHandler
from tornado_imagegate.handlers.chat import ChatCompletionsHandler
from tornado_imagegate.handlers.image_proxy import ImageProxyHandler
from tornado_imagegate.handlers.images_api import ImagesEditsHandler, ImagesGenerationsHandler
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
from tornado_imagegate.images.shared import SharedTier
from tornado_imagegate.images.store import ImageStore
from tornado_imagegate.lifecycle import Lifecycle
from tornado_imagegate.logsafe import log_request
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.redis_link import KeyHealthBoard, RedisLink
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
    settings: Settings,
    upstream: Upstream | None = None,
    metrics: Metrics | None = None,
    link: RedisLink | None = None,
) -> ImageStore:
    """The image store: memory LRU, the tiers below it, fetcher and link signer; with ``link``
    (``REDIS_URL``), the shared tier in Redis."""
    tiers: list[Tier] = []
    if settings.image_cache_dir:
        tiers.append(DiskTier(settings.image_cache_dir, settings.image_cache_dir_max_bytes))
    cache = ImageCache(settings.image_cache_max_bytes, settings.image_max_bytes, tiers)
    shared = SharedTier(link, settings.redis_image_ttl_seconds) if link is not None else None
    fetcher = ImageFetcher(
        upstream or Upstream(proxy=settings.upstream_proxy),
        cache,
        timeout=settings.image_fetch_timeout,
        max_bytes=settings.image_max_bytes,
        allow_private=settings.image_proxy_allow_private_networks,
        trusted_origins=settings.provider_origins,
        metrics=metrics,
        proxy=settings.image_fetch_proxy,
        shared=shared,
    )
    material = settings.secret_material()
    secret = derive_secret(settings.image_proxy_secret, material)
    # Before the data directory kept a secret, links were signed with one derived from the keys.
    kept = settings.image_proxy_secret_kept and material
    earlier = (derive_secret("", material),) if kept else ()
    return ImageStore(cache, fetcher, LinkSigner(secret, earlier), shared)


@dataclass(frozen=True)
class Services:
    """What the route table hands the handlers; tests and benches reach the services here too."""

    settings: Settings
    lifecycle: Lifecycle
    metrics: Metrics
    upstream: Upstream
    store: ImageStore
    generation: ImageService
    shared: RedisLink | None = None


def make_services(settings: Settings, store: ImageStore | None = None) -> Services:
    """The services of one application: built once, shared by every request."""
    upstream = Upstream(proxy=settings.upstream_proxy)
    metrics = Metrics()
    link = RedisLink(settings.redis_url) if settings.redis_url else None
    store = store or make_store(settings, upstream, metrics, link)
    metrics.watch(CacheCollector(store.cache))
    generation = ImageService(settings, store, upstream, metrics)
    if link is not None:
        share_key_health(generation, KeyHealthBoard(link, store.signer.secret))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # started by the first request's use instead (tests build apps outside a loop)
        else:
            link.start()
    return Services(
        settings=settings,
        lifecycle=Lifecycle(),
        metrics=metrics,
        upstream=upstream,
        store=store,
        generation=generation,
        shared=link,
    )


def share_key_health(generation: ImageService, board: KeyHealthBoard) -> None:
    """Share the rests of every provider group's keys and the optimiser's through Redis."""
    for provider in generation.providers.values():
        pool = getattr(provider, "keys", None)  # local providers (the demo) have no keys
        if pool is not None:
            board.watch(pool)
    if generation.optimiser is not None:
        board.watch(generation.optimiser.keys)


class GatewayApplication(Application):
    """The Tornado application, with the services its route table handed out (``services``)."""

    def __init__(self, services: Services, routes: list[Any], **settings: Any) -> None:
        super().__init__(routes, **settings)
        self.services = services


def make_app(settings: Settings, store: ImageStore | None = None) -> GatewayApplication:
    """Build the Tornado application with its services: the one route table."""
    services = make_services(settings, store)
    every_route = {"config": settings, "lifecycle": services.lifecycle}

    def route(pattern: str, handler: type[RequestHandler], **own: Any) -> tuple:
        """A route whose handler gets what every route gets, then its own services."""
        return (pattern, handler, {**every_route, **own})

    generation, metrics = services.generation, services.metrics
    # The /v1 prefix is optional: some clients are given the bare origin as their base URL.
    routes = [
        # First: the most requested path (every chat client re-fetches its images).
        route(r"/image-proxy", ImageProxyHandler, store=services.store),
        route(r"/", WelcomeHandler),
        route(r"/(?:v1/)?health/?", HealthHandler),
        route(r"/ready/?", ReadyHandler, shared=services.shared),
        route(r"/metrics/?", MetricsHandler, metrics=metrics),
        route(r"/openapi\.json", OpenApiHandler),
        route(r"/(?:v1/)?models/?", ModelsHandler),
        route(
            r"/(?:v1/)?chat/completions/?",
            ChatCompletionsHandler,
            service=generation,
            metrics=metrics,
        ),
        route(r"/(?:v1/)?images/generations/?", ImagesGenerationsHandler, service=generation),
        route(r"/(?:v1/)?images/edits/?", ImagesEditsHandler, service=generation),
        route(r"/static/(.+)", StaticHandler, path=STATIC_DIR),
        # Browsers ask for it on every first visit, whatever the page links.
        route(r"/(favicon\.ico)", StaticHandler, path=STATIC_DIR),
    ]
    return GatewayApplication(
        services,
        routes,
        template_path=STATIC_DIR,
        default_handler_class=NotFoundHandler,
        default_handler_args=every_route,
        log_function=functools.partial(log_request, metrics=metrics),
        compress_response=False,
        xsrf_cookies=False,
    )
