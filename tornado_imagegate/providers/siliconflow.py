"""SiliconFlow-type image API (``FLUX_GEN_*``, kind ``siliconflow``): ``image_size``, ``images``."""

from __future__ import annotations

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    data_uri,
    images_from_data_list,
    json_object_answer,
    json_request,
    with_extra,
)
from tornado_imagegate.sizing import RATIOS_1024, nearest_size

INFERENCE_STEPS = 50  # as the Flux gateway this ports sent
MAX_BATCH = 4  # SiliconFlow's batch_size limit
SIZES = tuple(dict.fromkeys(RATIOS_1024.values()))


class SiliconFlowApi:
    """``POST {model, prompt, image_size, num_inference_steps, seed, ...}`` -> ``images[].url``."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The nearest of the sizes SiliconFlow's FLUX models accept (the 1024 ratio table's)."""
        return nearest_size(SIZES, width, height)

    def images_per_call(self, model: str) -> int:
        """Up to four images a request (``batch_size``)."""
        return MAX_BATCH

    def build(self, call: ProviderCall) -> HTTPRequest:
        """The request body of SiliconFlow's ``/v1/images/generations``."""
        body: dict = {
            "model": call.model,
            "prompt": call.prompt,
            "image_size": f"{call.size[0]}x{call.size[1]}",
            "num_inference_steps": INFERENCE_STEPS,
            "seed": call.seed,
        }
        if call.count > 1:
            body["batch_size"] = call.count
        if call.request.negative_prompt:
            body["negative_prompt"] = call.request.negative_prompt
        if call.request.cfg is not None:
            body["guidance_scale"] = call.request.cfg
        # Images to edit (Qwen-Image-Edit): data URIs in image, image2, image3.
        for number, image in enumerate(call.inputs, 1):
            body["image" if number == 1 else f"image{number}"] = data_uri(image)
        return json_request(call.endpoint, call.key, with_extra(body, call.extra))

    def parse(self, response: HTTPResponse) -> list[ProviderImage]:
        """``images[].url`` (SiliconFlow), or ``data[].url`` / ``data[].b64_json`` (compatibles)."""
        answer = json_object_answer(response)
        images = images_from_data_list(answer.get("images")) or images_from_data_list(
            answer.get("data")
        )
        if not images:
            raise ProviderAnswerError("the answer holds no image")
        return images
