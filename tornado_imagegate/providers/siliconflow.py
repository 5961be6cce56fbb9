"""SiliconFlow-type image API (``FLUX_GEN_*``, kind ``siliconflow``): ``image_size``, ``images``."""

from __future__ import annotations

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.provider_kinds import provider_kind
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

INFERENCE_STEPS = 50  # as the Flux gateway this ports sent
MAX_BATCH = 4  # SiliconFlow's batch_size limit
# SiliconFlow's API reference: batch_size and guidance_scale are Kolors' alone; the Qwen-Image
# models take their guidance as cfg (0.1 to 20), and its edit models take no image_size.
QWEN_IMAGE = "qwen-image"
QWEN_IMAGE_EDIT = "qwen-image-edit"
CFG_RANGE = (0.1, 20.0)


def _family(model: str, family: str) -> bool:
    """Whether ``model`` (an id such as ``Qwen/Qwen-Image-Edit-2509``) is of ``family``."""
    return family in model.lower()


class SiliconFlowApi:
    """``POST {model, prompt, image_size, num_inference_steps, seed, ...}`` -> ``images[].url``."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The nearest of the sizes the model is made for (Qwen-Image's own, else the 1024
        ratio table's)."""
        return provider_kind("siliconflow").sizes_for(model).fit(width, height)

    def images_per_call(self, model: str) -> int:
        """Up to four images a request (``batch_size``); one for the Qwen-Image models."""
        return 1 if _family(model, QWEN_IMAGE) else MAX_BATCH

    def build(self, call: ProviderCall) -> HTTPRequest:
        """The request body of SiliconFlow's ``/v1/images/generations``."""
        qwen = _family(call.model, QWEN_IMAGE)
        body: dict = {
            "model": call.model,
            "prompt": call.prompt,
            "image_size": f"{call.size[0]}x{call.size[1]}",
            "num_inference_steps": INFERENCE_STEPS,
            "seed": call.seed,
        }
        if _family(call.model, QWEN_IMAGE_EDIT):
            del body["image_size"]  # the edit models keep the input image's size
        if call.count > 1:
            body["batch_size"] = call.count
        if call.request.negative_prompt:
            body["negative_prompt"] = call.request.negative_prompt
        if call.request.cfg is not None and qwen:
            low, high = CFG_RANGE
            body["cfg"] = min(high, max(low, call.request.cfg))
        elif call.request.cfg is not None:
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
