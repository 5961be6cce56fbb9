"""The welcome page, health checks and the model list."""

from __future__ import annotations

import time

from tornado_imagegate import openai_api
from tornado_imagegate.config import DEMO_MODEL
from tornado_imagegate.handlers.base import ApiHandler, BaseHandler


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


class ModelsHandler(ApiHandler):
    """``GET /v1/models``: the configured models, in configuration order."""

    started = int(time.time())

    def get(self) -> None:
        """List every model with the group that serves it."""
        entries = [
            (model, group.owned_by) for group in self.config.groups for model in group.models
        ]
        self.write_json(openai_api.model_list(entries, self.started))
