"""OpenAI Images API and compatibles (kind ``openai-images``): ``data[].b64_json`` or ``url``.

gpt-image models answer base64 only, take their own fields (``quality``, ``background``,
``output_format``, ``output_compression``, ``moderation``: passed on as the client sent them) and
report the tokens used (``usage``, handed on with the images). A request with input images goes
to the edits endpoint beside the generations one, as a multipart form.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.openai_api import InputImage
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    images_from_data_list,
    json_answer,
    json_request,
    multipart_body,
    with_extra,
)
from tornado_imagegate.sizing import nearest_size

# The sizes OpenAI's own models accept; other models (compatible services) get the size as asked.
MODEL_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "dall-e-2": ((256, 256), (512, 512), (1024, 1024)),
    "dall-e-3": ((1024, 1024), (1792, 1024), (1024, 1792)),
    "gpt-image": ((1024, 1024), (1536, 1024), (1024, 1536)),
}


def edits_endpoint(endpoint: str) -> str:
    """The edits endpoint beside a generations endpoint (``.../images/edits``); an endpoint
    of another form is called as configured."""
    trimmed = endpoint.rstrip("/")
    if trimmed.endswith("/images/generations"):
        return trimmed.removesuffix("/generations") + "/edits"
    return endpoint


def _extension(image: InputImage) -> str:
    return image.content_type.removeprefix("image/")


def _family(model: str) -> str:
    lowered = model.lower()
    # chatgpt-image-latest is one of OpenAI's GPT image models: their sizes, base64 only.
    if lowered.startswith(("gpt-image", "chatgpt-image")):
        return "gpt-image"
    return lowered


class OpenAIImagesApi:
    """``POST {model, prompt, n, size, response_format | gpt-image fields}`` -> ``data[]``."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The nearest size an OpenAI model accepts; other models get the size as asked."""
        sizes = MODEL_SIZES.get(_family(model))
        if sizes is None:
            return width, height
        if _family(model) == "dall-e-2":
            side = min(sizes, key=lambda s: abs(s[0] - max(width, height)))
            return side
        return nearest_size(sizes, width, height)

    def images_per_call(self, model: str) -> int:
        """dall-e-3 makes one image a request; the others up to ten."""
        return 1 if _family(model) == "dall-e-3" else 10

    def build(self, call: ProviderCall) -> HTTPRequest:
        """Ask for base64 images (no second download); gpt-image models always answer that way
        and refuse ``response_format``. The gpt-image fields the client sent go as sent."""
        body: dict = {
            "model": call.model,
            "prompt": call.prompt,
            "n": call.count,
            "size": f"{call.size[0]}x{call.size[1]}",
        }
        if _family(call.model) != "gpt-image":
            body["response_format"] = "b64_json"
        body.update(call.request.options)
        if call.inputs:
            return self.edit_request(call, with_extra(body, call.extra))
        return json_request(call.endpoint, call.key, with_extra(body, call.extra))

    def edit_request(self, call: ProviderCall, body: dict[str, Any]) -> HTTPRequest:
        """The same fields as a multipart form to the edits endpoint, with the images to edit
        (``image``, or ``image[]`` for several) and the mask if the client gave one."""
        fields = {
            name: value if isinstance(value, str) else json.dumps(value)
            for name, value in body.items()
            if not isinstance(value, (dict, list))
        }
        name = "image" if len(call.inputs) == 1 else "image[]"
        files = [
            (name, f"image{number}.{_extension(image)}", image)
            for number, image in enumerate(call.inputs, 1)
        ]
        if call.request.mask is not None:
            files.append(("mask", f"mask.{_extension(call.request.mask)}", call.request.mask))
        content_type, data = multipart_body(fields, files)
        return HTTPRequest(
            edits_endpoint(call.endpoint),
            method="POST",
            headers={
                "Authorization": f"Bearer {call.key}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
            body=data,
            follow_redirects=False,
        )

    def parse(self, response: HTTPResponse) -> list[ProviderImage]:
        """``data[].b64_json`` or ``data[].url``; ``usage`` rides on the first image."""
        answer = json_answer(response)
        images = images_from_data_list(answer.get("data") if isinstance(answer, dict) else None)
        if not images:
            raise ProviderAnswerError("the answer holds no image")
        usage = answer.get("usage")
        if isinstance(usage, dict) and usage:
            images[0] = dataclasses.replace(images[0], usage=usage)
        return images
