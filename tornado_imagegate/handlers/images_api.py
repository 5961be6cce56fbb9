"""``POST /v1/images/generations``: the OpenAI Images API over the same pipeline as chat."""

from __future__ import annotations

import asyncio
import base64

from tornado_imagegate import openai_api
from tornado_imagegate.generation import ImageService
from tornado_imagegate.handlers.base import JsonApiHandler


class ImagesGenerationsHandler(JsonApiHandler):
    """Answers ``{"created", "data": [{"url" or "b64_json", "revised_prompt"}]}``."""

    def initialize(self, service: ImageService) -> None:
        """Take the generation service from the route table."""
        self.service = service
        self.work: asyncio.Future | None = None

    def on_connection_close(self) -> None:
        """The client left: stop the work only it was waiting for."""
        super().on_connection_close()
        if self.work is not None and not self.work.done():
            self.work.cancel()

    async def post(self) -> None:
        """Validate, generate, answer with links or base64 bytes."""
        asked = self.service.images_request(self.json_body())
        self.work = asyncio.ensure_future(
            self.service.generate(asked.request, self.request_base_url())
        )
        try:
            generation = await self.work
        except asyncio.CancelledError:
            return
        entries = []
        for kept in generation.images:
            if asked.response_format == "url":
                entry = {"url": kept.link}
            else:
                data = self.service.store.image_of(kept).data
                entry = {"b64_json": base64.b64encode(data).decode("ascii")}
            entry["revised_prompt"] = generation.prompt
            entries.append(entry)
        self.write_json(openai_api.images_response(entries))
