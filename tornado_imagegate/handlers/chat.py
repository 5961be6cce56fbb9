"""``POST /v1/chat/completions``: an image for the last user message."""

from __future__ import annotations

from tornado_imagegate import openai_api
from tornado_imagegate.generation import ImageService
from tornado_imagegate.handlers.base import JsonApiHandler


class ChatCompletionsHandler(JsonApiHandler):
    """Answers a chat completion whose content is a markdown image of the gateway's own link."""

    def initialize(self, service: ImageService) -> None:
        """Take the generation service from the route table."""
        self.service = service

    async def post(self) -> None:
        """Validate, generate, answer a ``chat.completion``."""
        request = self.service.chat_request(self.json_body())
        generation = await self.service.generate(request, self.request_base_url())
        self.write_json(
            openai_api.chat_completion(request.model, generation.markdown(), request.prompt)
        )
