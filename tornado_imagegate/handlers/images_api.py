"""``POST /v1/images/generations`` and ``/v1/images/edits``: the OpenAI Images API over the same
pipeline as chat."""

from __future__ import annotations

import dataclasses
from typing import Any

import pybase64
from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from tornado_imagegate import errors, openai_api
from tornado_imagegate.generation import Generation
from tornado_imagegate.handlers.generation import GenerationHandler
from tornado_imagegate.images.inputs import checked_image
from tornado_imagegate.openai_api import ImagesApiRequest

# Form fields of an edit that are numbers (a form sends them as text).
_NUMBER_FIELDS = ("n", "seed", "cfg", "width", "height", "output_compression")


class ImagesGenerationsHandler(GenerationHandler):
    """Answers ``{"created", "data": [{"url" or "b64_json", "revised_prompt"}], "usage"?}``."""

    async def post(self) -> None:
        """Validate, generate, answer with links or base64 bytes (and the provider's usage)."""
        asked = self.service.images_request(self.json_body())
        await self.answer(asked)

    async def answer(self, asked: ImagesApiRequest) -> None:
        """Generate, then answer as the Images API does."""
        generation = await self.generated(asked.request)
        if generation is None:
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(self.images_answer(asked, generation))

    def images_answer(self, asked: ImagesApiRequest, generation: Generation) -> bytes:
        """The Images API answer as UTF-8 JSON: links or base64 bytes, and the provider's usage.

        Base64 the provider sent goes to the client as it came, never decoded and encoded again.
        """
        entries = []
        for kept in generation.images:
            if asked.response_format == "url":
                entry = {"url": kept.link}
            else:
                image = self.service.store.image_of(kept)  # 502 when it could not be kept
                encoded = kept.encoded or pybase64.b64encode(image.data).decode("ascii")
                entry = {"b64_json": encoded}
            entry["revised_prompt"] = generation.prompt
            entries.append(entry)
        return openai_api.images_response_json(entries, generation.usage)


class ImagesEditsHandler(ImagesGenerationsHandler):
    """The Images API's edit: a multipart form with the image(s), as ``images.edit`` sends it."""

    takes_images = True

    async def post(self) -> None:
        """Read the form, check the images and mask against the model, answer as a generation."""
        fields, files = self.form()
        asked = self.service.images_request(fields)
        images = files.get("image", []) + files.get("image[]", [])
        if not images:
            raise errors.invalid_parameter("image", "The form must carry an 'image' file.")
        self.service.check_inputs(asked.request.model, len(images), param="image")
        masks = files.get("mask", [])
        if masks:  # refused rather than dropped where the provider has no field for it
            self.service.check_mask(asked.request.model)
        limit = self.config.image_input_max_bytes
        inputs = tuple(checked_image(f.body, limit, "image") for f in images)
        mask = checked_image(masks[0].body, limit, "mask") if masks else None
        request = dataclasses.replace(asked.request, inputs=inputs, mask=mask)
        await self.answer(dataclasses.replace(asked, request=request))

    def form(self) -> tuple[dict[str, Any], dict[str, list[HTTPFile]]]:
        """The form's fields (numbers as numbers) and files; 400 when it is not a form."""
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise errors.invalid_parameter(
                "image", "An edit is sent as multipart/form-data with an 'image' file."
            )
        arguments: dict[str, list[bytes]] = {}
        files: dict[str, list[HTTPFile]] = {}
        try:
            parse_body_arguments(content_type, self.raw_body(), arguments, files)
        except HTTPInputError:
            raise errors.invalid_parameter(
                "image", "The body is not a well-formed multipart/form-data form."
            ) from None
        fields: dict[str, Any] = {}
        for name, values in arguments.items():
            text = values[0].decode("utf-8", "replace").strip()
            fields[name] = _number(text) if name in _NUMBER_FIELDS else text
        return fields, files


def _number(text: str) -> Any:
    """A form value as a number when it reads as one; as sent otherwise (validation says why)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
