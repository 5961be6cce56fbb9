"""OpenAI Images API and compatibles (kind ``openai-images``): ``data[].b64_json`` or ``url``."""

from __future__ import annotations

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    images_from_data_list,
    json_answer,
    json_request,
    with_extra,
)
from tornado_imagegate.sizing import nearest_size

# The sizes OpenAI's own models accept; other models (compatible services) get the size as asked.
MODEL_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "dall-e-2": ((256, 256), (512, 512), (1024, 1024)),
    "dall-e-3": ((1024, 1024), (1792, 1024), (1024, 1792)),
    "gpt-image": ((1024, 1024), (1536, 1024), (1024, 1536)),
}


def _family(model: str) -> str:
    lowered = model.lower()
    if lowered.startswith("gpt-image"):
        return "gpt-image"
    return lowered


class OpenAIImagesApi:
    """``POST {model, prompt, n, size, response_format}`` -> ``data[]``."""

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
        """Ask for base64 images (no second download); gpt-image models always answer that way."""
        body: dict = {
            "model": call.model,
            "prompt": call.prompt,
            "n": call.count,
            "size": f"{call.size[0]}x{call.size[1]}",
        }
        if _family(call.model) != "gpt-image":
            body["response_format"] = "b64_json"
        return json_request(call.endpoint, call.key, with_extra(body, call.extra))

    def parse(self, response: HTTPResponse) -> list[ProviderImage]:
        """``data[].b64_json`` or ``data[].url``."""
        answer = json_answer(response)
        images = images_from_data_list(answer.get("data") if isinstance(answer, dict) else None)
        if not images:
            raise ProviderAnswerError("the answer holds no image")
        return images
