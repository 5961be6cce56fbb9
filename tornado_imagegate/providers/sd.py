"""The Z-Image / SD API (``SD_*``, kind ``sd``): answers ``success`` and ``data.image_url``."""

from __future__ import annotations

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    json_object_answer,
    json_request,
    with_extra,
)

DEFAULT_STEPS = 8
DEFAULT_MODEL_INDEX = 5
DEFAULT_CFG = 7.0


class SdApi:
    """``POST {prompt, width, height, steps, cfg, model_index, seed}`` -> ``data.image_url``."""

    def __init__(self, steps: int = DEFAULT_STEPS, model_index: int = DEFAULT_MODEL_INDEX) -> None:
        self.steps = steps
        self.model_index = model_index

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """Any size from 64 to 2048 a side, as asked (already clamped)."""
        return width, height

    def images_per_call(self, model: str) -> int:
        """One image a request."""
        return 1

    def build(self, call: ProviderCall) -> HTTPRequest:
        """The request body the Z-Image gateway sends, field for field."""
        body: dict = {
            "prompt": call.prompt,
            "width": call.size[0],
            "height": call.size[1],
            "steps": self.steps,
            "cfg": call.request.cfg if call.request.cfg is not None else DEFAULT_CFG,
            "model_index": self.model_index,
            "seed": call.seed,
        }
        if call.request.negative_prompt:
            body["negative_prompt"] = call.request.negative_prompt
        return json_request(call.endpoint, call.key, with_extra(body, call.extra))

    def parse(self, response: HTTPResponse) -> list[ProviderImage]:
        """Success needs ``"success": true`` and ``data.image_url``."""
        answer = json_object_answer(response)
        data = answer.get("data")
        url = data.get("image_url") if isinstance(data, dict) else None
        if answer.get("success") is not True or not isinstance(url, str) or not url:
            reason = answer.get("error") or answer.get("message") or "success was not true"
            raise ProviderAnswerError(str(reason))
        return [ProviderImage(url=url)]
