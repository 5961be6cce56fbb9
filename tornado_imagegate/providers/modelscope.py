"""ModelScope API-Inference images (kind ``modelscope``), asynchronous mode: submit, poll a task.

``POST {base}/images/generations`` with ``X-ModelScope-Async-Mode: true`` answers a ``task_id``;
``GET {base}/tasks/{task_id}`` with ``X-ModelScope-Task-Type: image_generation`` answers its
``task_status`` and, once ``SUCCEED``, ``output_images`` (URLs). An edit model
(Qwen-Image-Edit) gets its input images in ``image_url``, a list of data URIs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.provider_kinds import provider_kind
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    data_uri,
    json_object_answer,
    json_request,
    with_extra,
)
from tornado_imagegate.providers.task_engine import (
    TaskApiDefaults,
    TaskHandle,
    TaskState,
    TaskStatus,
    looks_refused,
)

SUBMIT_PATH = "/images/generations"
DONE = frozenset({"SUCCEED", "SUCCEEDED", "SUCCESS"})
FAILED = frozenset({"FAILED", "FAILURE", "ERROR", "CANCELED", "CANCELLED"})
QUEUED = frozenset({"PENDING", "QUEUED", "QUEUING", "WAITING", "SUBMITTED"})
# The guidance range of its parameter table; a client's cfg outside it is clamped.
GUIDANCE_RANGE = (1.5, 20.0)


def tasks_url(endpoint: str, task_id: str) -> str:
    """``{base}/tasks/{task_id}``: the base is the endpoint without ``/images/generations``."""
    parts = urlsplit(endpoint)
    path = parts.path.rstrip("/")
    base = path[: -len(SUBMIT_PATH)] if path.endswith(SUBMIT_PATH) else "/v1"
    return urlunsplit(parts._replace(path=f"{base}/tasks/{task_id}", query="", fragment=""))


def _reason(answer: dict[str, Any]) -> str:
    """A failed task's reason, from whichever field this answer uses."""
    for name in ("message", "error_msg", "errors", "error", "detail"):
        value = answer.get(name)
        if isinstance(value, dict):
            value = value.get("message") or value.get("msg") or value.get("code")
        if isinstance(value, list) and value:
            value = value[0] if isinstance(value[0], str) else None
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _images(items: Any) -> tuple[ProviderImage, ...]:
    """``output_images``: URLs (or, tolerated, objects with a ``url``)."""
    images = []
    for item in items if isinstance(items, list) else []:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url:
            images.append(ProviderImage(url=url))
    return tuple(images)


class ModelScopeApi(TaskApiDefaults):
    """``POST {model, prompt, size: "WxH", seed, image_url?}`` -> ``task_id``; poll ->
    ``output_images``."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """Within the model family's limits (FLUX 1024, Qwen-Image 1664, others 2048 a side)."""
        return provider_kind("modelscope").sizes_for(model).fit(width, height)

    def images_per_call(self, model: str) -> int:
        """One image a task: the API has no count."""
        return 1

    def submit(self, call: ProviderCall) -> HTTPRequest:
        """The asynchronous submission; extra fields (``steps``, ``loras``...) join the body."""
        body: dict[str, Any] = {
            "model": call.model,
            "prompt": call.prompt,
            "size": f"{call.size[0]}x{call.size[1]}",
            "seed": call.seed,
        }
        if call.request.negative_prompt:
            body["negative_prompt"] = call.request.negative_prompt
        if call.request.cfg is not None:
            low, high = GUIDANCE_RANGE
            body["guidance"] = min(high, max(low, call.request.cfg))
        if call.inputs:
            # Data URIs even for an image the client named by its http(s) link: the provider
            # gets the very bytes the gateway checked, and needs no route to the client's host.
            body["image_url"] = [data_uri(image) for image in call.inputs]
        request = json_request(call.endpoint, call.key, with_extra(body, call.extra))
        request.headers["X-ModelScope-Async-Mode"] = "true"
        return request

    def read_submission(self, response: HTTPResponse) -> TaskState:
        """``{"task_id": ...}``; an answer with images (synchronous mode) is done at once."""
        answer = json_object_answer(response)
        task_id = answer.get("task_id")
        if isinstance(task_id, str | int) and str(task_id):
            return TaskState(TaskStatus.QUEUED, handle=TaskHandle(str(task_id)))
        images = _images(answer.get("output_images")) or _images(answer.get("images"))
        if images:
            return TaskState(TaskStatus.DONE, images=images)
        raise ProviderAnswerError(_reason(answer) or "the answer names no task")

    def poll(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest:
        """``GET {base}/tasks/{task_id}`` with the image-generation task type."""
        return HTTPRequest(
            handle.poll_url or tasks_url(call.endpoint, handle.task_id),
            method="GET",
            headers={
                "Authorization": f"Bearer {call.key}",
                "Accept": "application/json",
                "X-ModelScope-Task-Type": "image_generation",
            },
            follow_redirects=False,
        )

    def read_poll(self, response: HTTPResponse) -> TaskState:
        """``task_status``: SUCCEED with ``output_images``, FAILED, or anything else to wait."""
        answer = json_object_answer(response)
        status = str(answer.get("task_status") or answer.get("status") or "").upper()
        if status in DONE:
            images = _images(answer.get("output_images"))
            if not images:
                return TaskState(TaskStatus.FAILED, reason="the finished task holds no image")
            return TaskState(TaskStatus.DONE, images=images)
        if status in FAILED:
            reason = _reason(answer)
            code = answer.get("code") or answer.get("error_code")
            refused = looks_refused(reason, code)
            return TaskState(TaskStatus.REJECTED if refused else TaskStatus.FAILED, reason=reason)
        progress = answer.get("progress")
        percent = None
        if isinstance(progress, int | float) and not isinstance(progress, bool):
            # A fraction (0.4) or a percentage (40): both are seen in task APIs.
            percent = round(progress * 100 if 0 < progress < 1 else progress)
        if status in QUEUED:
            return TaskState(TaskStatus.QUEUED)
        return TaskState(TaskStatus.RUNNING, percent=percent)
