"""Alibaba DashScope image synthesis (kind ``dashscope``): Wan, Qwen-Image and its edit models.

``POST {base}/services/aigc/text2image/image-synthesis`` with ``X-DashScope-Async: enable``
answers ``output.task_id``; ``GET {base}/tasks/{task_id}`` answers ``output.task_status`` and,
once ``SUCCEEDED``, ``output.results[].url`` (links that expire after 24 hours).

The Wan 2.6 models are tasks too, on another endpoint and in the chat format:
``POST {base}/services/aigc/image-generation/generation`` with the prompt (and ``wan2.6-image``'s
input images) as one user message; their finished task answers
``output.choices[].message.content[].image``.

Of the Qwen-Image models only ``qwen-image`` and ``qwen-image-plus`` run as tasks; the others
(``qwen-image-max``, dated ids, the 2.0 series, the edit models) are synchronous:
``POST {base}/services/aigc/multimodal-generation/generation`` with the input images and the
prompt as one user message answers ``output.choices[].message.content[].image`` at once (links
that also expire after 24 hours).
"""

from __future__ import annotations

from dataclasses import replace
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

# Where the API's base ends: the submission endpoints are under {base}/services/.
SERVICES = "/services/"
MAX_IMAGES = 4  # Wan's parameters.n
SYNCHRONOUS_PATH = "/services/aigc/multimodal-generation/generation"
# DashScope runs only these Qwen-Image models as tasks; every other one (qwen-image-max, dated
# ids, the 2.0 series, the edit models) answers on the synchronous endpoint alone.
QWEN_TASK_MODELS = frozenset({"qwen-image", "qwen-image-plus"})
QWEN_FAMILY = "qwen-image"
# The edit models: qwen-image-edit takes no size and makes one image; the plus and max series
# (dated ones too) take a size and make up to six, as the 2.0 series does.
EDIT_FAMILY = "qwen-image-edit"
SIZED_EDIT_SERIES = ("qwen-image-edit-plus", "qwen-image-edit-max")
SIX_IMAGE_SERIES = (*SIZED_EDIT_SERIES, "qwen-image-2.0")
MAX_SYNCHRONOUS_IMAGES = 6
# parameters.seed of the synchronous and Wan 2.6 models: 0..2147483647.
SEED_RANGE = 2**31
# The Wan 2.6 models (wan2.6-t2i, wan2.6-image): tasks in the messages format, where the
# text-to-image endpoint refuses them.
WAN_MESSAGES_FAMILY = "wan2.6"
WAN_MESSAGES_PATH = "/services/aigc/image-generation/generation"
FAILED = frozenset({"FAILED", "CANCELED", "CANCELLED", "UNKNOWN"})


def api_base(endpoint: str) -> str:
    """``https://host/api/v1`` of an endpoint ``https://host/api/v1/services/aigc/...``."""
    parts = urlsplit(endpoint)
    path = parts.path
    base = path[: path.index(SERVICES)] if SERVICES in path else "/api/v1"
    return urlunsplit(parts._replace(path=base, query="", fragment=""))


def is_synchronous(model: str) -> bool:
    """Whether ``model`` answers on the synchronous endpoint only: a Qwen-Image model other than
    ``qwen-image`` and ``qwen-image-plus`` (``qwen-image-max``, the 2.0 series, the edits)."""
    lowered = model.lower()
    return QWEN_FAMILY in lowered and lowered not in QWEN_TASK_MODELS


def is_wan_messages_model(model: str) -> bool:
    """Whether ``model`` is a Wan 2.6 model (a task on the image-generation endpoint)."""
    return WAN_MESSAGES_FAMILY in model.lower()


def takes_size(model: str) -> bool:
    """Whether a synchronous model takes ``parameters.size`` (all but plain qwen-image-edit)."""
    lowered = model.lower()
    return EDIT_FAMILY not in lowered or any(series in lowered for series in SIZED_EDIT_SERIES)


def _failure(holder: dict[str, Any]) -> TaskState:
    """A failed task: refused when its code or message says a content check stopped it."""
    code, message = holder.get("code"), holder.get("message")
    reason = ": ".join(str(part) for part in (code, message) if isinstance(part, str) and part)
    refused = looks_refused(code, message)
    return TaskState(TaskStatus.REJECTED if refused else TaskStatus.FAILED, reason=reason)


def _chosen_images(output: dict[str, Any]) -> tuple[ProviderImage, ...]:
    """The images of an answer in the chat format: ``output.choices[].message.content[].image``."""
    choices = output.get("choices")
    images = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            url = part.get("image") if isinstance(part, dict) else None
            if isinstance(url, str) and url:
                images.append(ProviderImage(url=url))
    return tuple(images)


def _answered(output: dict[str, Any]) -> TaskState:
    """A synchronous call's answer: DONE with ``output.choices[].message.content[].image``."""
    images = _chosen_images(output)
    if not images:
        raise ProviderAnswerError("the answer holds no image")
    return TaskState(TaskStatus.DONE, images=images)


def _message_parameters(call: ProviderCall, sized: bool) -> dict[str, Any]:
    """``parameters`` of a messages-format request: ``n``, ``seed`` (within 0..2147483647),
    ``size`` when the model takes one, and the client's ``negative_prompt``."""
    parameters: dict[str, Any] = {"n": call.count, "seed": call.seed % SEED_RANGE}
    if sized:
        parameters["size"] = f"{call.size[0]}*{call.size[1]}"
    if call.request.negative_prompt:
        parameters["negative_prompt"] = call.request.negative_prompt
    return parameters


def _messages_request(
    call: ProviderCall, path: str, content: list[dict[str, str]], parameters: dict[str, Any]
) -> HTTPRequest:
    """``POST {base}{path}`` with ``content`` as the one user message, and ``parameters``."""
    body = {
        "model": call.model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }
    return json_request(api_base(call.endpoint) + path, call.key, body)


class DashScopeApi(TaskApiDefaults):
    """``{model, input: {prompt}, parameters: {size: "W*H", n, seed}}`` -> ``output.task_id``;
    a synchronous model's ``{model, input: {messages}, parameters}`` -> its images at once."""

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """Within the model's limits (wan2.1/2.2 sides, wan2.5/2.6 pixels, qwen-image sizes, the
        edit models' sides, the 2.0 series' pixels)."""
        return provider_kind("dashscope").sizes_for(model).fit(width, height)

    def images_per_call(self, model: str) -> int:
        """Up to four images a task (Wan); Qwen-Image makes one, but for the edit models' plus
        and max series and the 2.0 series, which make six."""
        lowered = model.lower()
        if any(series in lowered for series in SIX_IMAGE_SERIES):
            return MAX_SYNCHRONOUS_IMAGES
        return 1 if QWEN_FAMILY in lowered else MAX_IMAGES

    def submit(self, call: ProviderCall) -> HTTPRequest:
        """The asynchronous submission, or a synchronous model's call; extra fields join
        ``parameters`` (``watermark``...)."""
        if is_synchronous(call.model):
            return self._synchronous(call)
        if is_wan_messages_model(call.model):
            return self._wan_messages(call)
        prompt: dict[str, Any] = {"prompt": call.prompt}
        if call.request.negative_prompt:
            prompt["negative_prompt"] = call.request.negative_prompt
        parameters = {
            "size": f"{call.size[0]}*{call.size[1]}",
            "n": call.count,
            "seed": call.seed,
        }
        body = {
            "model": call.model,
            "input": prompt,
            "parameters": with_extra(parameters, call.extra),
        }
        request = json_request(call.endpoint, call.key, body)
        request.headers["X-DashScope-Async"] = "enable"
        return request

    def _wan_messages(self, call: ProviderCall) -> HTTPRequest:
        """A Wan 2.6 task: the prompt, then ``wan2.6-image``'s input images (data URIs), as one
        user message; ``size``, ``n``, ``seed`` and ``negative_prompt`` in ``parameters``."""
        content: list[dict[str, str]] = [{"text": call.prompt}]
        content.extend({"image": data_uri(image)} for image in call.inputs)
        parameters = _message_parameters(call, sized=True)
        if "image" in call.model.lower():
            # wan2.6-image draws images alone (interleaved text and images otherwise take at
            # most one input image and make one picture).
            parameters["enable_interleave"] = False
        parameters = with_extra(parameters, call.extra)
        request = _messages_request(call, WAN_MESSAGES_PATH, content, parameters)
        request.headers["X-DashScope-Async"] = "enable"
        return request

    def _synchronous(self, call: ProviderCall) -> HTTPRequest:
        """A synchronous call: the input images (data URIs) first, the text last.

        An edit model called without an input image gets the text alone, and DashScope decides,
        as the other kinds' edit models do.
        """
        # Data URIs even for an image the client named by its http(s) link: the provider gets
        # the very bytes the gateway checked, and needs no route to the client's host.
        content: list[dict[str, str]] = [{"image": data_uri(image)} for image in call.inputs]
        content.append({"text": call.prompt})
        sized = takes_size(call.model)
        parameters = with_extra(_message_parameters(call, sized), call.extra)
        if not sized:
            parameters.pop("size", None)  # qwen-image-edit refuses one, even from the extras
        return _messages_request(call, SYNCHRONOUS_PATH, content, parameters)

    def read_submission(self, response: HTTPResponse) -> TaskState:
        """``output.task_id`` (and its first status), or a synchronous call's images at once
        (``output.choices``); a ``code`` without ``output`` failed."""
        answer = json_object_answer(response)
        output = answer.get("output")
        if not isinstance(output, dict):
            if answer.get("code"):
                return _failure(answer)
            raise ProviderAnswerError("the answer names no task")
        if "choices" in output:
            return _answered(output)
        task_id = output.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderAnswerError("the answer names no task")
        state = self._state(output)
        return TaskState(state.status, handle=TaskHandle(task_id), reason=state.reason)

    def poll(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest:
        """``GET {base}/tasks/{task_id}``."""
        return HTTPRequest(
            handle.poll_url or f"{api_base(call.endpoint)}/tasks/{handle.task_id}",
            method="GET",
            headers={"Authorization": f"Bearer {call.key}", "Accept": "application/json"},
            follow_redirects=False,
        )

    def read_poll(self, response: HTTPResponse) -> TaskState:
        """``output.task_status``; SUCCEEDED with ``output.results[].url`` (Wan 2.6:
        ``output.choices[].message.content[].image``)."""
        answer = json_object_answer(response)
        output = answer.get("output")
        if not isinstance(output, dict):
            if answer.get("code"):
                return _failure(answer)
            raise ProviderAnswerError("the answer holds no task status")
        return self._state(output)

    def cancel(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """``POST {base}/tasks/{task_id}/cancel`` (it stops a task still waiting in the queue)."""
        return HTTPRequest(
            f"{api_base(call.endpoint)}/tasks/{handle.task_id}/cancel",
            method="POST",
            headers={"Authorization": f"Bearer {call.key}", "Accept": "application/json"},
            body=b"",
            follow_redirects=False,
        )

    @staticmethod
    def _state(output: dict[str, Any]) -> TaskState:
        status = str(output.get("task_status") or "").upper()
        if status == "SUCCEEDED":
            results = output.get("results")
            items = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
            images = tuple(
                ProviderImage(url=item["url"])
                for item in items
                if isinstance(item.get("url"), str) and item["url"]
            ) or _chosen_images(output)
            if images:
                return TaskState(TaskStatus.DONE, images=images)
            # Every image failed (with n > 1 the task succeeds if one does): say why.
            return _failure(next((item for item in items if item.get("code")), output))
        if status in FAILED:
            failure = _failure(output)
            if status == "UNKNOWN" and not failure.reason:
                return replace(failure, reason="the task is unknown or has expired")
            return failure
        if status == "RUNNING":
            return TaskState(TaskStatus.RUNNING)
        # PENDING, and any status this gateway does not know: wait (the deadline bounds it).
        return TaskState(TaskStatus.QUEUED if status == "PENDING" else TaskStatus.RUNNING)
