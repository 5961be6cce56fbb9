"""The generation pipeline: pick the provider, make the images, keep them, build the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from tornado_imagegate import conversation, errors, openai_api
from tornado_imagegate.config import ProviderGroup, Settings
from tornado_imagegate.images.inputs import checked_source, load_input
from tornado_imagegate.images.store import ImageStore, KeptImage
from tornado_imagegate.keys import cooldown_policy
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.openai_api import ChatBody, ImageRequest, InputImage
from tornado_imagegate.prompt import OptimisedPrompt, PromptOptimiser
from tornado_imagegate.provider_kinds import provider_kind
from tornado_imagegate.providers import Provider, ProviderImage
from tornado_imagegate.providers.group import GroupProvider
from tornado_imagegate.providers.task_engine import TaskProvider
from tornado_imagegate.upstream import Upstream

logger = logging.getLogger(__name__)

# Links guessed from a chat answer's free text, tried beyond the number of images asked for:
# a "source" or "terms" link may come before the image's.
SPARE_GUESSED_LINKS = 2


@dataclass(frozen=True)
class Generation:
    """The outcome of one request: the prompt the provider got and the gateway's image links."""

    request: ImageRequest
    prompt: str
    optimised: bool
    images: tuple[KeptImage, ...]
    thinking: str = ""
    # The provider's token usage, summed over its answers; None when it reported none.
    usage: dict[str, Any] | None = None

    def markdown(self) -> str:
        """The chat answer: a markdown image per link, then the optimised prompt if there is one."""
        parts = [openai_api.markdown_image(self.request.prompt, i.link) for i in self.images]
        if self.optimised:
            parts.append(f"Optimized prompt: {self.prompt}")
        elif self.request.refined:  # so that the next follow-up can build on it
            parts.append(f"Prompt: {self.prompt}")
        return "\n\n".join(parts)


@dataclass(frozen=True)
class PendingInputs:
    """A request's input images, checked as far as they can be without the network, loaded
    inside the generation: a client that leaves stops the loading, and the time limit counts it."""

    # Decoded data URIs, and links (the gateway's own, or http(s)) still to load, in order.
    images: tuple[InputImage | str, ...] = ()
    # A follow-up's previous image (the gateway's own link), passed on if it is still kept.
    previous: str = ""

    def __bool__(self) -> bool:
        """Whether anything is left to load."""
        return bool(self.images or self.previous)


def total_usage(images: list[ProviderImage]) -> dict[str, Any] | None:
    """The usage reports of a provider's answers added up (numbers only, nested ones too)."""
    total: dict[str, Any] = {}
    for image in images:
        if image.usage:
            _add_counts(total, image.usage)
    return total or None


def _add_counts(total: dict[str, Any], counts: dict[str, Any]) -> None:
    for name, value in counts.items():
        if isinstance(value, dict):
            inner = total.setdefault(name, {})
            if isinstance(inner, dict):
                _add_counts(inner, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if isinstance(total.get(name, 0), int):
                total[name] = total.get(name, 0) + value


def make_provider(
    group: ProviderGroup, settings: Settings, upstream: Upstream, metrics: Metrics | None = None
) -> Provider:
    """The provider object of a configured group, as its kind declares it."""
    kind = provider_kind(group.kind)
    if kind.local:
        return kind.build(settings)
    provider_class = TaskProvider if kind.polls else GroupProvider
    return provider_class(
        group,
        kind.build(settings),
        upstream,
        settings.image_gen_timeout,
        metrics,
        policy=cooldown_policy(settings),
        image_max_bytes=settings.image_max_bytes,
    )


class ImageService:
    """Turns validated requests into kept images; knows nothing of HTTP handlers."""

    def __init__(
        self,
        settings: Settings,
        store: ImageStore,
        upstream: Upstream,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.providers: dict[str, Provider] = {
            group.name: make_provider(group, settings, upstream, metrics)
            for group in settings.groups
        }
        self.optimiser = (
            PromptOptimiser(
                settings.optimiser,
                upstream,
                settings.llm_timeout,
                policy=cooldown_policy(settings),
                metrics=metrics,
            )
            if settings.optimiser.enabled
            else None
        )

    def group_for(self, model: str) -> ProviderGroup:
        """The provider group of ``model``; 404 ``model_not_found`` when none has it."""
        group = self.settings.group_for(model)
        if group is None:
            raise errors.model_not_found(model)
        return group

    def read_chat(self, body: dict[str, Any]) -> ChatBody:
        """A chat request, read once (400 when its model is missing, 404 when it is unknown)."""
        chat = openai_api.read_chat(body)
        self.group_for(chat.model)
        return chat

    def chat_request(self, chat: ChatBody) -> ImageRequest:
        """Validate a chat request into an ImageRequest for its model's provider."""
        group = self.group_for(chat.model)
        prompt, opted_out = conversation.opt_out(openai_api.chat_prompt(chat))
        follow_up = None
        if (
            self.settings.conversation_mode == "refine"
            and not opted_out
            and not chat.fields.get("prompt")
        ):
            follow_up = conversation.follow_up(chat, prompt, provider_kind(group.kind).ratios)
        if follow_up is None:
            return openai_api.image_request(chat.fields, chat.model, prompt, group.kind)
        request = openai_api.image_request(chat.fields, chat.model, follow_up.prompt, group.kind)
        return replace(request, refined=follow_up.continues, conversation=follow_up.turns)

    def check_inputs(self, model: str, count: int, param: str = "messages") -> None:
        """400 when ``count`` input images are more than ``model`` takes (none: not supported)."""
        if count == 0:
            return
        takes = self.group_for(model).image_inputs_for(model)
        if takes == 0:
            raise errors.image_input_not_supported(model)
        if count > takes:
            raise errors.invalid_image_input(
                f"The model '{model}' takes at most {takes} input image(s); {count} were sent.",
                param,
            )

    def check_mask(self, model: str) -> None:
        """400 ``mask_not_supported`` when ``model``'s provider has no field for an edit mask."""
        if not self.group_for(model).takes_mask(model):
            raise errors.mask_not_supported(model)

    def input_plan(
        self, request: ImageRequest, urls: tuple[str, ...], previous: str | None = None
    ) -> PendingInputs:
        """The input images ``urls`` name, checked now as far as no network is needed (how
        many, whether the model takes any, data URIs decoded and checked); links are loaded
        by ``generate``.

        With no image of its own, a follow-up (``request.refined``) on a model that takes
        images gets the conversation's ``previous`` image.
        """
        self.check_inputs(request.model, len(urls))
        limit = self.settings.image_input_max_bytes
        if urls:
            return PendingInputs(images=tuple(checked_source(url, limit) for url in urls))
        group = self.group_for(request.model)
        if previous and request.refined and group.image_inputs_for(request.model):
            return PendingInputs(previous=previous)
        return PendingInputs()

    async def load_inputs(
        self, request: ImageRequest, pending: PendingInputs, deadline: float
    ) -> ImageRequest:
        """``request`` with its pending input images loaded before ``deadline`` (504 after it):
        the gateway's own links from its store, other links through the guarded fetcher.

        A previous image no longer kept is left out (the prompt still carries the change).
        """
        limit = self.settings.image_input_max_bytes
        try:
            async with asyncio.timeout_at(deadline):
                if pending.images:
                    links = [image for image in pending.images if isinstance(image, str)]
                    fetched = iter(
                        await asyncio.gather(*(load_input(self.store, u, limit) for u in links))
                    )
                    loaded = tuple(
                        image if isinstance(image, InputImage) else next(fetched)
                        for image in pending.images
                    )
                    return dataclasses.replace(request, inputs=loaded)
                if not pending.previous:
                    return request
                try:
                    image = await load_input(self.store, pending.previous, limit)
                except errors.GatewayError as exc:
                    logger.info("the previous image is not passed on: %s", exc.message)
                    return request
                return dataclasses.replace(request, inputs=(image,))
        except TimeoutError:
            raise errors.GatewayError(
                504,
                "upstream_timeout",
                "An input image did not load within the generation's time limit "
                f"({self.settings.image_gen_timeout:g}s).",
                headers=errors.NO_RETRY,
            ) from None

    def images_request(self, body: dict[str, Any]) -> openai_api.ImagesApiRequest:
        """Validate an Images API body; an absent or unknown model gets the default model."""
        model = body.get("model")
        if not isinstance(model, str) or self.settings.group_for(model.strip()) is None:
            model = self.settings.images_default_model or self.settings.model_ids[0]
        group = self.group_for(model.strip())
        return openai_api.images_api_request(body, model.strip(), group.kind)

    async def optimise(self, request: ImageRequest) -> OptimisedPrompt:
        """The prompt for the image model: optimised when the optimiser is on and not skipped."""
        if self.optimiser is None or not request.enhance:
            return OptimisedPrompt(request.prompt, changed=False)
        with self.timed("optimise"):
            if request.conversation:
                return await self.optimiser.refine(request.conversation, request.prompt)
            return await self.optimiser.optimise(request.prompt)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Observe how long a stage takes (when it succeeds)."""
        started = time.monotonic()
        yield
        if self.metrics is not None:
            self.metrics.observe_stage(stage, time.monotonic() - started)

    async def generate(
        self,
        request: ImageRequest,
        base_url: str,
        on_thinking: Callable[[str], None] | None = None,
        pending: PendingInputs | None = None,
    ) -> Generation:
        """Load the pending input images, optimise the prompt, make the images, keep them, and
        return the gateway's links.

        ``on_thinking`` hears a reasoning optimiser's thinking as soon as it is known, then each
        change in how a provider's task stands (queue position, percent done), a line each.
        """
        group = self.group_for(request.model)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if pending:
            request = await self.load_inputs(
                request, pending, started + self.settings.image_gen_timeout
            )
        loading = loop.time() - started
        optimised = await self.optimise(request)
        if optimised.thinking and on_thinking is not None:
            on_thinking(optimised.thinking)
        # One time limit for loading the inputs, making the images and downloading them (the
        # optimiser's time is not charged to it).
        deadline = loop.time() + self.settings.image_gen_timeout - loading
        with self.timed("generate"):
            made = await self.providers[group.name].generate(
                request, optimised.prompt, on_thinking, deadline=deadline
            )
        # The images are downloaded within the same time limit.
        kept = await self.keep_all(made, base_url, request.n, deadline)
        logger.info(
            "generated %d image(s) with %s (%s, %s)",
            len(kept),
            request.model,
            group.name,
            request.size,
        )
        return Generation(
            request=request,
            prompt=optimised.prompt,
            optimised=optimised.changed,
            images=kept,
            thinking=optimised.thinking,
            usage=total_usage(made),
        )

    async def keep_all(
        self, made: list[ProviderImage], base_url: str, wanted: int, deadline: float | None = None
    ) -> tuple[KeptImage, ...]:
        """Keep up to ``wanted`` images, downloaded side by side before ``deadline``.

        Links guessed from free text count only if they download as images; at most
        ``wanted + SPARE_GUESSED_LINKS`` of them are tried, so an answer full of links cannot
        turn into thousands of fetches.
        """
        if len(made) == 1 and not made[0].guessed:  # the usual case
            return (await self.keep(made[0], base_url, deadline),)
        if not any(image.guessed for image in made):
            return tuple(
                await asyncio.gather(*[self.keep(i, base_url, deadline) for i in made[:wanted]])
            )
        candidates = made[: wanted + SPARE_GUESSED_LINKS]
        outcomes = await asyncio.gather(
            *[self.keep(image, base_url, deadline) for image in candidates],
            return_exceptions=True,
        )
        kept: list[KeptImage] = []
        for image, outcome in zip(candidates, outcomes, strict=True):
            if isinstance(outcome, KeptImage):
                kept.append(outcome)
            elif image.guessed and isinstance(outcome, errors.GatewayError):
                logger.info("a link in the provider's answer is not an image; skipped")
            elif isinstance(outcome, BaseException):
                raise outcome
        if not kept:
            raise errors.GatewayError(
                502,
                "upstream_error",
                "The provider's answer held no image.",
                headers=errors.NO_RETRY,
            )
        return tuple(kept[:wanted])

    async def keep(
        self, image: ProviderImage, base_url: str, deadline: float | None = None
    ) -> KeptImage:
        """Keep a provider image (bytes, or a URL fetched at once) and return the gateway's link.

        A link guessed from free text must download as an image before ``deadline``.
        """
        if image.data is not None:
            return await self.store.keep_bytes_shared(image.data, base_url, image.encoded)
        if image.url:
            return await self.store.keep_url(
                image.url, base_url, required=image.guessed, deadline=deadline
            )
        raise errors.GatewayError(
            502,
            "upstream_error",
            "The provider answered without an image.",
            headers=errors.NO_RETRY,
        )
