"""The generation pipeline: pick the provider, make the images, keep them, build the answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tornado_imagegate import errors, openai_api
from tornado_imagegate.config import ProviderGroup, Settings
from tornado_imagegate.imagestore import ImageStore
from tornado_imagegate.openai_api import ImageRequest
from tornado_imagegate.providers import Provider, ProviderImage
from tornado_imagegate.providers.demo import DemoProvider

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """The outcome of one request: the prompt the provider got and the gateway's image links."""

    request: ImageRequest
    prompt: str
    optimised: bool
    links: tuple[str, ...]

    def markdown(self) -> str:
        """The chat answer: a markdown image per link, then the optimised prompt if there is one."""
        parts = [openai_api.markdown_image(self.request.prompt, link) for link in self.links]
        if self.optimised:
            parts.append(f"Optimized prompt: {self.prompt}")
        return "\n\n".join(parts)


class ImageService:
    """Turns validated requests into kept images; knows nothing of HTTP handlers."""

    def __init__(self, settings: Settings, store: ImageStore) -> None:
        self.settings = settings
        self.store = store
        self.providers: dict[str, Provider] = {"demo": DemoProvider()}

    def group_for(self, model: str) -> ProviderGroup:
        """The provider group of ``model``; 404 ``model_not_found`` when none has it."""
        group = self.settings.group_for(model)
        if group is None:
            raise errors.model_not_found(model)
        return group

    def chat_request(self, body: dict[str, Any]) -> ImageRequest:
        """Validate a chat completions body into an ImageRequest for its model's provider."""
        model = openai_api.requested_model(body)
        group = self.group_for(model)
        prompt = openai_api.chat_prompt(body)
        return openai_api.image_request(body, model, prompt, group.kind)

    async def generate(self, request: ImageRequest, base_url: str) -> Generation:
        """Make the images of ``request``, keep them, and return the gateway's links."""
        group = self.group_for(request.model)
        provider = self.providers.get(group.kind)
        if provider is None:
            raise errors.GatewayError(
                501,
                "provider_not_available",
                f"Provider kind '{group.kind}' (group {group.name}) is not available in this "
                "version of the gateway.",
            )
        images = await provider.generate(request)
        links = tuple([await self.keep(image, base_url) for image in images])
        logger.info(
            "generated %d image(s) with %s (%s, %s)",
            len(links),
            request.model,
            group.name,
            request.size,
        )
        return Generation(request=request, prompt=request.prompt, optimised=False, links=links)

    async def keep(self, image: ProviderImage, base_url: str) -> str:
        """Keep a provider image (bytes, or a URL fetched at once) and return the gateway's link."""
        if image.data is not None:
            return self.store.keep_bytes(image.data, base_url)
        if image.url:
            return await self.store.keep_url(image.url, base_url)
        raise errors.GatewayError(
            502,
            "upstream_error",
            "The provider answered without an image.",
            headers=errors.NO_RETRY,
        )
