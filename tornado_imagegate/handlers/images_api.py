"""``POST /v1/images/generations``: the OpenAI Images API over the same pipeline as chat."""

from __future__ import annotations

import base64

from tornado_imagegate import openai_api
from tornado_imagegate.handlers.generation import GenerationHandler


class ImagesGenerationsHandler(GenerationHandler):
    """Answers ``{"created", "data": [{"url" or "b64_json", "revised_prompt"}], "usage"?}``."""

    async def post(self) -> None:
        """Validate, generate, answer with links or base64 bytes (and the provider's usage)."""
        asked = self.service.images_request(self.json_body())
        generation = await self.generated(asked.request)
        if generation is None:
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
        self.write_json(openai_api.images_response(entries, generation.usage))
