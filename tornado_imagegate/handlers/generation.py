"""The base of routes that generate images: the work is abandoned when its client leaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tornado_imagegate.generation import Generation, ImageService, PendingInputs
from tornado_imagegate.handlers.base import JsonApiHandler
from tornado_imagegate.openai_api import ImageRequest

logger = logging.getLogger(__name__)


class GenerationHandler(JsonApiHandler):
    """A route that generates images: its work is abandoned when its client leaves."""

    def initialize(self, service: ImageService) -> None:
        """Take the generation service from the route table."""
        self.service = service
        # What the client's leaving cancels: the generation's own task (a stream), or the
        # request's task while it waits for the generation (a plain answer).
        self.work: asyncio.Future[Generation] | asyncio.Task | None = None

    def on_connection_close(self) -> None:
        """The client left: stop the work only it was waiting for."""
        super().on_connection_close()
        if self.work is not None and not self.work.done():
            logger.info("client went away; abandoning its generation")
            self.work.cancel()

    def start_generation(
        self,
        request: ImageRequest,
        on_thinking: Callable[[str], None] | None = None,
        pending: PendingInputs | None = None,
    ) -> asyncio.Future[Generation]:
        """Run the generation, from loading its ``pending`` input images on, as a task the
        connection's close can cancel."""
        self.work = asyncio.ensure_future(
            self.service.generate(request, self.request_base_url(), on_thinking, pending)
        )
        return self.work

    async def generated(
        self, request: ImageRequest, pending: PendingInputs | None = None
    ) -> Generation | None:
        """The generation's outcome, or None when the client left before it was made.

        It runs in the request's own task (no task of its own to start and wake), from loading
        its ``pending`` input images on: the connection's close cancels that task while it
        waits here.
        """
        task = asyncio.current_task()
        self.work = task
        try:
            return await self.service.generate(request, self.request_base_url(), pending=pending)
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
            return None
        finally:
            self.work = None
