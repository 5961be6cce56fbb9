"""Black Forest Labs' FLUX API (kind ``bfl``): ``POST /v1/{model}`` with ``x-key``, then poll.

The submission answers a task ``id`` and its ``polling_url`` (possibly on another BFL host);
polls answer ``Pending`` (with ``progress``), ``Ready`` (``result.sample``, a signed link that
lives minutes), ``Content Moderated`` / ``Request Moderated`` (a refusal in a 200 answer),
``Error`` / ``Failed``, or ``Task not found``. BFL has no cancel call.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, urlsplit

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.openai_api import InputImage
from tornado_imagegate.provider_kinds import provider_kind
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    json_object_answer,
    with_extra,
)
from tornado_imagegate.providers.task_engine import (
    TaskApiDefaults,
    TaskHandle,
    TaskState,
    TaskStatus,
)
from tornado_imagegate.providers.task_links import keyed_request, service_url, text_of
from tornado_imagegate.sizing import ratio_text

# Models sized by ``aspect_ratio`` rather than width and height (Kontext, 1.1 [pro] Ultra).
ASPECT_RATIO_MODELS = ("kontext", "ultra")

_REJECTED = {"content moderated", "request moderated"}
_FAILED = {"error", "failed", "task not found"}


def api_base(endpoint: str) -> str:
    """The API's base (``https://api.bfl.ai/v1``): a bare host gets ``/v1``."""
    trimmed = endpoint.rstrip("/")
    return trimmed if urlsplit(trimmed).path else trimmed + "/v1"


def is_fill(model: str) -> bool:
    """Whether the model is the inpainting one (``flux-pro-1.0-fill``): image and mask."""
    return "fill" in model.lower()


def takes_aspect_ratio(model: str) -> bool:
    """Whether the model is sized by ``aspect_ratio`` rather than ``width`` and ``height``."""
    return any(name in model.lower() for name in ASPECT_RATIO_MODELS)


class BflApi(TaskApiDefaults):
    """FLUX models by BFL's endpoint name (``flux-pro-1.1``, ``flux-kontext-pro``...)."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """Multiples of 32 from 256 to 1440 a side (Kontext: ratios from 21:9 to 9:21)."""
        return provider_kind("bfl").sizes_for(model).fit(width, height)

    def images_per_call(self, model: str) -> int:
        """One image a task."""
        return 1

    def submit(self, call: ProviderCall) -> HTTPRequest:
        """``POST {base}/{model}``: prompt, seed, PNG, and the size or the aspect ratio (the fill
        model: the image and its mask instead, the result taking the image's size)."""
        body: dict[str, Any] = {"prompt": call.prompt, "seed": call.seed, "output_format": "png"}
        images: dict[str, InputImage | None]
        if is_fill(call.model):
            # Inpainting: the image and its mask (without one, the image's transparency).
            images = {"image": call.inputs[0] if call.inputs else None, "mask": call.request.mask}
        else:
            if takes_aspect_ratio(call.model):
                body["aspect_ratio"] = ratio_text(*call.size)
            else:
                body["width"], body["height"] = call.size
            # Images to edit (Kontext, FLUX.2): input_image, input_image_2, ...
            images = {
                "input_image" if number == 1 else f"input_image_{number}": image
                for number, image in enumerate(call.inputs, 1)
            }
        # As raw base64, as BFL takes them.
        for field, image in images.items():
            if image is not None:
                body[field] = base64.b64encode(image.data).decode("ascii")
        url = f"{api_base(call.endpoint)}/{quote(call.model.strip('/'), safe='/')}"
        return keyed_request(url, {"x-key": call.key}, "POST", with_extra(body, call.extra))

    def read_submission(self, response: HTTPResponse) -> TaskState:
        """The task ``id`` and ``polling_url``."""
        answer = json_object_answer(response)
        task_id = answer.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderAnswerError("the submission answer names no task")
        polling_url = answer.get("polling_url")
        handle = TaskHandle(task_id, poll_url=polling_url if isinstance(polling_url, str) else "")
        return TaskState(TaskStatus.QUEUED, handle=handle)

    def poll(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest:
        """``GET polling_url`` (a BFL host), else ``{base}/get_result?id=``."""
        url = service_url(handle.poll_url, call.endpoint)
        url = url or f"{api_base(call.endpoint)}/get_result?id={quote(handle.task_id)}"
        return keyed_request(url, {"x-key": call.key})

    def read_poll(self, response: HTTPResponse) -> TaskState:
        """``status`` (or ``state``): Ready -> the sample; moderated -> refused; Error -> failed."""
        answer = json_object_answer(response)
        status = answer.get("status", answer.get("state"))
        name = status.strip().lower() if isinstance(status, str) else ""
        if name == "ready":
            result = answer.get("result")
            sample = result.get("sample") if isinstance(result, dict) else None
            if isinstance(sample, str) and sample:
                return TaskState(TaskStatus.DONE, images=(ProviderImage(url=sample),))
            return TaskState(TaskStatus.DONE)
        details = text_of(answer.get("details")) or text_of(answer.get("result"))
        if name in _REJECTED:
            return TaskState(TaskStatus.REJECTED, reason=_joined(status, details))
        if name in _FAILED:
            return TaskState(TaskStatus.FAILED, reason=_joined(status, details))
        # Pending, and any status BFL may add: keep polling (the deadline bounds it).
        return TaskState(TaskStatus.RUNNING, percent=_percent(answer.get("progress")))


def _joined(status: Any, details: str) -> str:
    return f"{status}: {details}" if details else str(status)


def _percent(progress: Any) -> int | None:
    """BFL's ``progress`` (a fraction; a number above 1 is read as a percent)."""
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        return None
    value = progress * 100 if progress <= 1 else progress
    return max(0, min(100, round(value)))
