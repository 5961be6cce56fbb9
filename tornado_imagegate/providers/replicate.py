"""Replicate predictions (kind ``replicate``): create with ``Prefer: wait``, then poll ``urls.get``.

A model is ``owner/name`` (``POST /v1/models/{owner}/{name}/predictions``) or a version id,
alone or as ``owner/name:version`` (``POST /v1/predictions`` with ``version``). The prediction
comes back 201, finished at once when the wait sufficed, else ``starting`` / ``processing`` (its
``logs`` carry progress bars) until ``succeeded`` (``output``: a URL or a list of them),
``failed`` (``error``; a safety refusal is a failure with an NSFW message), ``canceled`` or
``aborted``. ``urls.cancel`` cancels it.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import quote, urlsplit

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.provider_kinds import REPLICATE_ASPECT_RATIOS, provider_kind
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderCall,
    ProviderImage,
    decode_base64_image,
    json_object_answer,
    with_extra,
)
from tornado_imagegate.providers.task_engine import (
    TaskApiDefaults,
    TaskHandle,
    TaskState,
    TaskStatus,
)
from tornado_imagegate.providers.task_links import (
    keyed_request,
    last_percent,
    service_url,
    text_of,
)

DEFAULT_TIMEOUT = 180.0
# Prefer: wait holds the creation call open for up to 60 s.
MAX_WAIT_SECONDS = 60
MIN_CANCEL_AFTER_SECONDS = 5
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
# Words of a safety refusal in a failed prediction's error.
_REFUSAL = re.compile(
    r"nsfw|safety|unsafe|moderat|flagged|sensitive|content policy|inappropriate", re.IGNORECASE
)


def api_base(endpoint: str) -> str:
    """The API's base (``https://api.replicate.com/v1``): a bare host gets ``/v1``."""
    trimmed = endpoint.rstrip("/")
    return trimmed if urlsplit(trimmed).path else trimmed + "/v1"


def aspect_ratio(width: int, height: int) -> str:
    """The value of ``REPLICATE_ASPECT_RATIOS`` nearest ``width`` x ``height``."""
    wanted = math.log(width / height)
    return min(
        REPLICATE_ASPECT_RATIOS,
        key=lambda ratio: abs(
            math.log(int(ratio.split(":")[0]) / int(ratio.split(":")[1])) - wanted
        ),
    )


def model_and_version(model: str) -> tuple[str, str]:
    """(``owner/name`` or "", version id or "") of a configured model id."""
    name, _, version = model.strip().partition(":")
    if not version and VERSION_ID.match(name):
        return "", name
    return name.strip("/"), version


class ReplicateApi(TaskApiDefaults):
    """Any image model on Replicate, by ``owner/name`` or version id."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The size of the nearest ``aspect_ratio`` Replicate's image models take."""
        return provider_kind("replicate").sizes_for(model).fit(width, height)

    def images_per_call(self, model: str) -> int:
        """One image a prediction (not every model takes ``num_outputs``)."""
        return 1

    def submit(self, call: ProviderCall) -> HTTPRequest:
        """Create the prediction, waiting a while for it (``Prefer: wait``).

        ``Cancel-After`` has Replicate end the prediction itself at the gateway's deadline,
        should the gateway never get to cancel it.
        """
        inputs: dict[str, Any] = {
            "prompt": call.prompt,
            "aspect_ratio": aspect_ratio(*call.size),
            "seed": call.seed,
        }
        if call.request.negative_prompt:
            inputs["negative_prompt"] = call.request.negative_prompt
        inputs = with_extra(inputs, call.extra)
        name, version = model_and_version(call.model)
        base = api_base(call.endpoint)
        if version:
            url, body = f"{base}/predictions", {"version": version, "input": inputs}
        else:
            url, body = f"{base}/models/{quote(name, safe='/')}/predictions", {"input": inputs}
        wait = max(1, min(MAX_WAIT_SECONDS, int(self.timeout // 3)))
        cancel_after = max(MIN_CANCEL_AFTER_SECONDS, math.ceil(self.timeout))
        headers = {
            "Authorization": f"Bearer {call.key}",
            "Prefer": f"wait={wait}",
            "Cancel-After": f"{cancel_after}s",
        }
        return keyed_request(url, headers, "POST", body)

    def read_submission(self, response: HTTPResponse) -> TaskState:
        """The prediction: its id and URLs, and its outcome when the wait saw it through."""
        answer = json_object_answer(response)
        prediction_id = answer.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise ProviderAnswerError("the submission answer names no prediction")
        urls = answer.get("urls") if isinstance(answer.get("urls"), dict) else {}
        handle = TaskHandle(
            prediction_id,
            poll_url=urls.get("get") if isinstance(urls.get("get"), str) else "",
            cancel_url=urls.get("cancel") if isinstance(urls.get("cancel"), str) else "",
        )
        return _state(answer, handle)

    def poll(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest:
        """``GET urls.get`` (a Replicate host), else ``{base}/predictions/{id}``."""
        url = service_url(handle.poll_url, call.endpoint)
        url = url or f"{api_base(call.endpoint)}/predictions/{quote(handle.task_id)}"
        return keyed_request(url, {"Authorization": f"Bearer {call.key}"})

    def read_poll(self, response: HTTPResponse) -> TaskState:
        """The prediction's status, progress and output."""
        return _state(json_object_answer(response))

    def cancel(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """``POST urls.cancel`` (a Replicate host), else ``{base}/predictions/{id}/cancel``."""
        url = service_url(handle.cancel_url, call.endpoint)
        url = url or f"{api_base(call.endpoint)}/predictions/{quote(handle.task_id)}/cancel"
        return keyed_request(url, {"Authorization": f"Bearer {call.key}"}, "POST")


def _state(prediction: dict[str, Any], handle: TaskHandle | None = None) -> TaskState:
    """A prediction object as a task state."""
    status = prediction.get("status")
    name = status.strip().lower() if isinstance(status, str) else ""
    if name == "succeeded":
        return TaskState(TaskStatus.DONE, handle, images=_images(prediction.get("output")))
    if name == "failed":
        reason = text_of(prediction.get("error")) or "the prediction failed"
        refused = _REFUSAL.search(reason) is not None
        return TaskState(
            TaskStatus.REJECTED if refused else TaskStatus.FAILED, handle, reason=reason
        )
    if name in ("canceled", "cancelled", "aborted"):
        return TaskState(TaskStatus.FAILED, handle, reason=f"the prediction was {name}")
    if name == "starting":
        return TaskState(TaskStatus.QUEUED, handle)
    # processing, and any status Replicate may add: keep polling (the deadline bounds it).
    return TaskState(TaskStatus.RUNNING, handle, percent=last_percent(prediction.get("logs")))


def _images(output: Any) -> tuple[ProviderImage, ...]:
    """The images of ``output``: one URL, a list of them, or an object holding them."""
    if isinstance(output, str):
        output = [output]
    elif isinstance(output, dict):
        output = list(output.values())
    images = []
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, str):
            continue
        if item.startswith("data:"):
            images.append(ProviderImage(data=decode_base64_image(item)))
        elif item.startswith(("https://", "http://")):
            images.append(ProviderImage(url=item))
    return tuple(images)
