"""The welcome page, health checks, the model list and the OpenAPI document."""

from __future__ import annotations

import time

from tornado_imagegate import errors, openai_api, openapi
from tornado_imagegate.config import DEMO_MODEL, is_loopback_host
from tornado_imagegate.handlers.base import ApiHandler, BaseHandler
from tornado_imagegate.metrics import CONTENT_TYPE, Metrics
from tornado_imagegate.redis_link import UNREACHABLE, RedisLink


class WelcomeHandler(BaseHandler):
    """``GET /``: what this service is, how to point a client at it, and a playground."""

    def get(self) -> None:
        """Render the welcome page."""
        self.set_header("X-Frame-Options", "DENY")
        self.render(
            "index.html",
            base_url=self.request_base_url(),
            models=self.config.model_ids,
            demo_model=DEMO_MODEL,
            optimiser=self.config.optimiser.enabled,
        )


class HealthHandler(BaseHandler):
    """``GET /health``: the process answers; never calls an upstream."""

    def get(self) -> None:
        """Answer ``{"status": "ok"}``."""
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """``GET /ready``: configuration loaded, not shutting down, and the shared store (Redis, if
    configured) reachable; 503 otherwise."""

    def initialize(self, shared: RedisLink | None = None) -> None:
        """Take the link to the shared store (None without ``REDIS_URL``) from the route table."""
        self.shared = shared

    def get(self) -> None:
        """Answer ready, or 503 during a shutdown or while Redis is unreachable."""
        if self.lifecycle.shutting_down:
            self.write_json({"status": "shutting_down"}, status=503)
            return
        if self.shared is not None:
            self.shared.start()
            if not self.shared.reachable:
                self.write_json({"status": "degraded", "reason": UNREACHABLE}, status=503)
                return
        self.write_json({"status": "ready", "models": len(self.config.model_ids)})


class OpenApiHandler(BaseHandler):
    """``GET /openapi.json``: the OpenAPI 3.1 description of the public API."""

    def get(self) -> None:
        """Send the document, its ``servers`` set to this gateway's base URL."""
        self.write_json(openapi.for_base_url(self.request_base_url()))


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text format; loopback only unless METRICS_ACCESS says so."""

    def initialize(self, metrics: Metrics) -> None:
        """Take the metrics from the route table."""
        self.metrics = metrics

    def get(self) -> None:
        """Render the metrics, if this client may see them."""
        access = self.config.metrics_access
        if access == "off":
            raise errors.path_not_found(self.request.path)
        if access == "loopback" and not self.from_loopback():
            raise errors.GatewayError(
                403, "forbidden", "Metrics are served to loopback clients only (METRICS_ACCESS)."
            )
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.metrics.render())

    def from_loopback(self) -> bool:
        """A loopback peer, and no proxy in between (a local proxy would forward anyone)."""
        proxied = any(
            self.request.headers.get(name) for name in ("X-Forwarded-For", "X-Real-Ip", "Forwarded")
        )
        return not proxied and is_loopback_host(self.request.remote_ip or "")


class ModelsHandler(ApiHandler):
    """``GET /v1/models``: the configured models, in configuration order."""

    started = int(time.time())

    def get(self) -> None:
        """List every model with the group that serves it."""
        entries = [
            (model, group.owned_by) for group in self.config.groups for model in group.models
        ]
        self.write_json(openai_api.model_list(entries, self.started))
