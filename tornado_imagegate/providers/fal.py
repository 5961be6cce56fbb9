"""fal's queue (kind ``fal``): submit to ``/{app_id}``, poll ``status_url``, read ``response_url``.

The model is the app id (``fal-ai/flux/dev``). The submission answers ``request_id`` and the
``status_url``, ``response_url`` and ``cancel_url`` (on the app's path without its subpath:
``fal-ai/flux/requests/{id}``). A status is ``IN_QUEUE`` (``queue_position``), ``IN_PROGRESS``
(``logs``) or ``COMPLETED``; the result (``images[].url``) is read from ``response_url``, and a
failed run answers that read with an error. An image the safety checker flagged
(``has_nsfw_concepts``) comes back blacked out, so it is dropped. ``PUT cancel_url`` cancels.

Apps that edit get their input images as data URIs: in ``image_urls`` (the ``/edit`` apps,
Kontext multi) or in ``image_url`` (Kontext, inpainting apps, with the mask in ``mask_url``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.provider_kinds import provider_kind
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    data_uri,
    decode_base64_image,
    json_object_answer,
    with_extra,
)
from tornado_imagegate.providers.task_engine import TaskHandle, TaskState, TaskStatus
from tornado_imagegate.providers.task_links import (
    keyed_request,
    last_percent,
    service_url,
    text_of,
)

# fal's named sizes (``image_size``); any other size goes as {"width", "height"}.
IMAGE_SIZE_PRESETS = {
    (1024, 1024): "square_hd",
    (512, 512): "square",
    (768, 1024): "portrait_4_3",
    (576, 1024): "portrait_16_9",
    (1024, 768): "landscape_4_3",
    (1024, 576): "landscape_16_9",
}
NSFW_FLAGS = ("has_nsfw_concepts", "nsfw_content_detected")
_RUNNING = {"IN_PROGRESS", "RUNNING"}
_FAILED = {"FAILED", "ERROR", "CANCELED", "CANCELLED"}


def takes_image_list(model: str) -> bool:
    """Whether the app takes its input images as a list (``image_urls``), not one ``image_url``."""
    lowered = model.lower()
    # The multi-image apps: fal-ai/flux-pro/kontext/multi, and its max app, .../kontext/max/multi.
    return "/edit" in lowered or "/multi" in lowered


def app_path(model: str) -> str:
    """``fal-ai/flux`` of ``fal-ai/flux/dev``: the app's path, where its requests live."""
    return "/".join(model.strip("/").split("/")[:2])


class FalApi:
    """Any image app on fal's queue, by app id."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """Sides rounded to multiples of 16, from 256 to 2048."""
        return provider_kind("fal").sizes_for(model).fit(width, height)

    def images_per_call(self, model: str) -> int:
        """One image a request (not every app takes ``num_images``)."""
        return 1

    def submit(self, call: ProviderCall) -> HTTPRequest:
        """``POST {queue}/{app_id}``: prompt, ``image_size`` (a preset, or width and height), and
        the images to edit and the mask as data URIs."""
        size = IMAGE_SIZE_PRESETS.get(call.size) or {"width": call.size[0], "height": call.size[1]}
        body: dict[str, Any] = {"prompt": call.prompt, "image_size": size, "seed": call.seed}
        if call.request.negative_prompt:
            body["negative_prompt"] = call.request.negative_prompt
        if call.request.cfg is not None:
            body["guidance_scale"] = call.request.cfg
        if call.inputs and takes_image_list(call.model):
            body["image_urls"] = [data_uri(image) for image in call.inputs]
        elif call.inputs:
            body["image_url"] = data_uri(call.inputs[0])
        if call.request.mask is not None:
            body["mask_url"] = data_uri(call.request.mask)
        url = f"{call.endpoint.rstrip('/')}/{quote(call.model.strip('/'), safe='/')}"
        return keyed_request(url, _auth(call), "POST", with_extra(body, call.extra))

    def read_submission(self, response: HTTPResponse) -> TaskState:
        """The ``request_id`` and its status, response and cancel URLs."""
        answer = json_object_answer(response)
        request_id = answer.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ProviderAnswerError("the submission answer names no request")
        urls = {
            name: value if isinstance(value := answer.get(name), str) else ""
            for name in ("status_url", "response_url", "cancel_url")
        }
        handle = TaskHandle(
            request_id,
            poll_url=urls["status_url"],
            result_url=urls["response_url"],
            cancel_url=urls["cancel_url"],
        )
        return TaskState(TaskStatus.QUEUED, handle, queue_position=_position(answer))

    def poll(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest:
        """``GET status_url?logs=1`` (logs carry the progress)."""
        url = self._url(handle.poll_url, handle, call, "/status")
        return keyed_request(url + ("&" if "?" in url else "?") + "logs=1", _auth(call))

    def read_poll(self, response: HTTPResponse) -> TaskState:
        """IN_QUEUE (position), IN_PROGRESS (percent from the logs), COMPLETED (read the result)."""
        answer = json_object_answer(response)
        status = answer.get("status")
        name = status.strip().upper() if isinstance(status, str) else ""
        error = text_of(answer.get("error"))
        if name == "COMPLETED":
            if error:
                return TaskState(TaskStatus.FAILED, reason=error)
            return TaskState(TaskStatus.DONE)  # the images are read from response_url
        if name in _FAILED:
            return TaskState(TaskStatus.FAILED, reason=error or f"the request ended {name}")
        if name in _RUNNING:
            return TaskState(TaskStatus.RUNNING, percent=_log_percent(answer.get("logs")))
        # IN_QUEUE, and any status fal may add: keep polling (the deadline bounds it).
        return TaskState(TaskStatus.QUEUED, queue_position=_position(answer))

    def result(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """``GET response_url``."""
        return keyed_request(self._url(handle.result_url, handle, call, ""), _auth(call))

    def read_result(self, response: HTTPResponse) -> TaskState:
        """``images[].url`` (or one ``image``), less those the safety checker flagged."""
        answer = json_object_answer(response)
        items = answer.get("images")
        if not isinstance(items, list):
            items = [answer["image"]] if isinstance(answer.get("image"), dict) else []
        flags = next((answer[f] for f in NSFW_FLAGS if isinstance(answer.get(f), list)), [])
        images, flagged = [], 0
        for index, item in enumerate(items):
            if index < len(flags) and flags[index] is True:
                flagged += 1
                continue
            image = _image(item)
            if image is not None:
                images.append(image)
        if not images and flagged:
            reason = "the provider's safety checker flagged the image"
            return TaskState(TaskStatus.REJECTED, reason=reason)
        return TaskState(TaskStatus.DONE, images=tuple(images))

    def cancel(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """``PUT cancel_url`` (fal cancels requests still queued)."""
        url = self._url(handle.cancel_url, handle, call, "/cancel")
        return keyed_request(url, _auth(call), "PUT")

    @staticmethod
    def _url(given: str, handle: TaskHandle, call: ProviderCall, tail: str) -> str:
        """``given`` when it is on the configured queue; else built from the app and the id."""
        built = (
            f"{call.endpoint.rstrip('/')}/{quote(app_path(call.model), safe='/')}"
            f"/requests/{quote(handle.task_id)}{tail}"
        )
        return service_url(given, call.endpoint) or built


def _auth(call: ProviderCall) -> dict[str, str]:
    return {"Authorization": f"Key {call.key}"}


def _position(answer: dict[str, Any]) -> int | None:
    position = answer.get("queue_position")
    return position if isinstance(position, int) and not isinstance(position, bool) else None


def _log_percent(logs: Any) -> int | None:
    """The last percent in the run's log messages."""
    if not isinstance(logs, list):
        return None
    messages = [entry.get("message") for entry in logs if isinstance(entry, dict)]
    return last_percent("\n".join(m for m in messages if isinstance(m, str)))


def _image(item: Any) -> ProviderImage | None:
    url = item.get("url") if isinstance(item, dict) else item
    if not isinstance(url, str) or not url:
        return None
    if url.startswith("data:"):
        return ProviderImage(data=decode_base64_image(url))
    content_type = item.get("content_type") if isinstance(item, dict) else None
    if isinstance(content_type, str) and content_type.startswith("image/"):
        return ProviderImage(url=url, content_type=content_type)
    return ProviderImage(url=url)
