"""Fake asynchronous task APIs: submit a task, poll it, cancel it (ModelScope, DashScope).

Each submitted task follows the fake's ``plan``, one step per poll (the last step repeats):
``"pending"``, ``"running"``, ``"done"``, ``"failed"``, ``"refused"`` (moderation), or an
``Answer`` sent as it is (a 429 with ``Retry-After``, a 500). ``plan = ["pending"]`` is a task
that never finishes; ``next_plans`` gives the next tasks plans of their own. With
``expire_results`` a result link downloads once, then is 403, as a signed link that has expired.
``polls`` and ``cancels`` record what the gateway asked.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import uuid
from collections import deque
from typing import Any

from .origin import FakeOrigin
from .providers import Answer, FakeUpstream, Recorded

_task_numbers = itertools.count(1)


class FakeTaskApi(FakeUpstream):
    """The part every task API shares: tasks by id, a plan per task, polls and cancels recorded."""

    submit_path = "/submit"
    tasks_path = "/tasks/"
    require_key = True

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(host, image_host, **listening)
        self.plan: list[str | Answer] = ["pending", "running", "done"]
        # Plans for the next tasks, one each, in order of submission (then ``plan``).
        self.next_plans: list[list[str | Answer]] = []
        self.expire_results = False
        self.reason = "the model failed to render the image"
        self.refusal = "the content may be inappropriate (moderation)"
        self.tasks: dict[str, deque[str | Answer]] = {}
        self.task_bodies: dict[str, Any] = {}
        self.results: dict[str, list[str]] = {}
        self.polls: list[Recorded] = []
        self.cancels: list[str] = []

    def base(self) -> str:
        """The API base to configure the gateway with."""
        return self.url("/api/v1")

    def polls_of(self, task_id: str) -> list[Recorded]:
        """The polls of one task."""
        return [poll for poll in self.polls if poll.path.endswith(f"{self.tasks_path}{task_id}")]

    # --- the service's side ----------------------------------------------------------------

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        path = recorded.path
        if recorded.key is None:
            return Answer(401, self.error_json(401, "no bearer key"))
        if self.tasks_path in path:
            task_id = path.split(self.tasks_path, 1)[1]
            if recorded.method == "POST" and task_id.endswith("/cancel"):
                task_id = task_id.removesuffix("/cancel")
                self.cancels.append(task_id)
                return Answer(json=self.cancelled_json(task_id))
            if recorded.method != "GET":
                return Answer(405, self.error_json(405, "method not allowed"))
            self.polls.append(recorded)
            steps = self.tasks.get(task_id)
            if steps is None:
                return Answer(404, self.error_json(404, f"no task {task_id}"))
            step = steps.popleft() if len(steps) > 1 else steps[0]
            if isinstance(step, Answer):
                return step
            return Answer(json=self.status_json(task_id, step, self._results(task_id, step)))
        if recorded.method == "POST" and path.endswith(self.submit_path):
            if self.queue:
                return super()._choose(recorded, valid)
            if not valid:
                return Answer(400, self.error_json(400, "the request body is not a JSON object"))
            return Answer(json=self.submitted_json(self.new_task(recorded)))
        return Answer(404, self.error_json(404, f"no endpoint at {path}"))

    def new_task(self, recorded: Recorded) -> str:
        """Start a task for a valid submission, following the next plan; its id."""
        task_id = f"{uuid.uuid4().hex[:8]}-{next(_task_numbers)}"
        self.tasks[task_id] = deque(self.next_plans.pop(0) if self.next_plans else self.plan)
        self.task_bodies[task_id] = recorded.json
        return task_id

    def _results(self, task_id: str, step: str) -> list[str]:
        if step != "done":
            return []
        if task_id not in self.results:
            count = self.image_count(self.task_bodies[task_id])
            urls = []
            for _ in range(count):
                url = self.new_image_url()
                if self.expire_results:
                    path = url.split("/", 3)[3]
                    assert self.image_host is not None
                    self.image_host.serve_once(path, self.make_png(len(self.image_urls)))
                urls.append(url)
            self.results[task_id] = urls
        return self.results[task_id]

    def image_count(self, body: Any) -> int:
        """How many images the submission asked for."""
        return 1

    def submitted_json(self, task_id: str) -> Any:
        """The answer to a submission."""
        raise NotImplementedError

    def status_json(self, task_id: str, step: str, urls: list[str]) -> Any:
        """The answer to a poll, at this step of the plan."""
        raise NotImplementedError

    def cancelled_json(self, task_id: str) -> Any:
        """The answer to a cancel call."""
        return {}


class FakeModelScope(FakeTaskApi):
    """ModelScope API-Inference, async mode: ``task_id``, then ``task_status`` / ``output_images``.

    The submission must carry ``X-ModelScope-Async-Mode: true`` and each poll
    ``X-ModelScope-Task-Type: image_generation``, as the service wants; otherwise 400.
    """

    image_prefix = "ms"
    submit_path = "/v1/images/generations"
    tasks_path = "/v1/tasks/"

    def base(self) -> str:
        """``http://host:port/v1``."""
        return self.url("/v1")

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        if recorded.method == "POST" and recorded.path.endswith(self.submit_path):
            if recorded.headers.get("x-modelscope-async-mode") != "true":
                return Answer(400, self.error_json(400, "only async mode is supported"))
        elif recorded.method == "GET":
            if recorded.headers.get("x-modelscope-task-type") != "image_generation":
                return Answer(400, self.error_json(400, "X-ModelScope-Task-Type is required"))
        return super()._choose(recorded, valid)

    def error_json(self, status: int, message: str) -> Any:
        """ModelScope's error body."""
        return {"errors": {"message": message}, "request_id": uuid.uuid4().hex}

    def submitted_json(self, task_id: str) -> Any:
        """``{"task_id"}``, as the async mode answers."""
        return {"task_id": task_id, "request_id": uuid.uuid4().hex}

    def status_json(self, task_id: str, step: str, urls: list[str]) -> Any:
        """``PENDING``, ``RUNNING``, ``SUCCEED`` with ``output_images``, or ``FAILED``."""
        status = {"pending": "PENDING", "running": "RUNNING", "done": "SUCCEED"}.get(step, "FAILED")
        answer: dict[str, Any] = {"task_id": task_id, "task_status": status}
        if step == "done":
            answer["output_images"] = urls
        elif step == "failed":
            answer["message"] = self.reason
        elif step == "refused":
            answer["message"] = self.refusal
        return answer


class FakeDashScope(FakeTaskApi):
    """DashScope image synthesis, async: ``output.task_id``, then ``output.task_status``; and
    the Qwen-Image models, synchronous, on the multimodal-generation endpoint.

    The submission must carry ``X-DashScope-Async: enable``; otherwise 403 as the service does
    (``AccessDenied``: synchronous calls are not supported). Of the Qwen-Image models it takes
    ``qwen-image`` and ``qwen-image-plus`` alone (``Model not exist`` for the others). A
    synchronous call must not carry the header, and is checked as the service checks it
    (``InvalidParameter`` otherwise): one user message of images, each a base64 data URI of a
    real image, then the text. The edit models take 1 to 3 images: no ``size`` for plain
    ``qwen-image-edit`` (and ``n`` 1), a ``"W*H"`` of 512..2048 a side and ``n`` 1..6 for the
    plus and max series. The 2.0 series takes 0 to 3, ``n`` 1..6 and 512*512..2048*2048 pixels;
    the others (``qwen-image-max``, dated ids) none, ``n`` 1 and one of the five sizes.
    ``sync_calls`` records the valid calls; ``script()`` answers the next valid ones instead of
    the images (a refusal, an error).

    The Wan 2.6 models (``wan2.6-t2i``, ``wan2.6-image``) are tasks on the image-generation
    endpoint, in the messages format, and the text-to-image endpoint refuses them as the service
    does (``Model not exist``). Their submission is checked as the service checks it: one user
    message of one text part, then no image (``wan2.6-t2i``) or 1 to 4 (``wan2.6-image``, unless
    ``enable_interleave``), each a base64 data URI of a real image; ``n`` 1..4 and a ``"W*H"``
    of 1280*1280 (``wan2.6-image``: 768*768) to 1440*1440 pixels, 1:4..4:1. Their finished
    tasks answer in the chat format, ``output.choices[].message.content[].image``.
    """

    image_prefix = "ds"
    submit_path = "/api/v1/services/aigc/text2image/image-synthesis"
    tasks_path = "/api/v1/tasks/"
    sync_path = "/api/v1/services/aigc/multimodal-generation/generation"
    messages_path = "/api/v1/services/aigc/image-generation/generation"

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(image_host, host, **listening)
        self.sync_calls: list[Recorded] = []

    def edit_images(self, edit: Recorded) -> list[bytes]:
        """The decoded input images of a recorded edit, in order."""
        content = edit.json["input"]["messages"][0]["content"]
        return [base64.b64decode(part["image"].split(",", 1)[1]) for part in content[:-1]]

    def edit_text(self, edit: Recorded) -> str:
        """The instruction of a recorded edit (its last content part)."""
        return edit.json["input"]["messages"][0]["content"][-1]["text"]

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        asynchronous = recorded.headers.get("x-dashscope-async") == "enable"
        if recorded.method == "POST" and recorded.path.endswith(self.submit_path):
            if not asynchronous:
                refusal = "current user api does not support synchronous calls"
                return Answer(403, self.error_json(403, refusal))
            model = recorded.json.get("model") if valid else None
            if recorded.key is not None and isinstance(model, str) and not _a_task_model(model):
                return Answer(400, self.error_json(400, f"Model not exist: {model}"))
        if recorded.method == "POST" and recorded.path.endswith(self.sync_path):
            return self._edit(recorded, valid)
        if recorded.method == "POST" and recorded.path.endswith(self.messages_path):
            if recorded.key is None:
                return Answer(401, self.error_json(401, "Invalid API-key provided."))
            if not asynchronous:
                refusal = "current user api does not support synchronous calls"
                return Answer(403, self.error_json(403, refusal))
            problem = _wan_problem(recorded.json) if valid else "the body is not a JSON object"
            if problem:
                return Answer(400, self.error_json(400, problem))
            if self.queue:
                return self.queue.popleft()
            return Answer(json=self.submitted_json(self.new_task(recorded)))
        return super()._choose(recorded, valid)

    def _edit(self, recorded: Recorded, valid: bool) -> Answer:
        if recorded.key is None:
            return Answer(401, self.error_json(401, "Invalid API-key provided."))
        if "x-dashscope-async" in recorded.headers:
            refusal = "current user api does not support asynchronous calls"
            return Answer(403, self.error_json(403, refusal))
        problem = _synchronous_problem(recorded.json) if valid else "the body is not a JSON object"
        if problem:
            return Answer(400, self.error_json(400, problem))
        self.sync_calls.append(recorded)
        if self.queue:
            return self.queue.popleft()
        count = recorded.json.get("parameters", {}).get("n", 1)
        return Answer(json=self._edited(count))

    def _edited(self, count: int) -> Any:
        """``output.choices[0].message.content[].image``: links on the image host."""
        content = [{"image": self.new_image_url()} for _ in range(count)]
        return {
            "request_id": uuid.uuid4().hex,
            "output": {
                "choices": [
                    {
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ]
            },
            "usage": {"width": 1024, "height": 1024, "image_count": count},
        }

    def error_json(self, status: int, message: str) -> Any:
        """DashScope's error body: ``{request_id, code, message}``."""
        code = {400: "InvalidParameter", 401: "InvalidApiKey", 403: "AccessDenied"}.get(
            status, "InternalError"
        )
        return {"request_id": uuid.uuid4().hex, "code": code, "message": message}

    def image_count(self, body: Any) -> int:
        """``parameters.n``."""
        n = body.get("parameters", {}).get("n") if isinstance(body, dict) else None
        return n if isinstance(n, int) and n > 0 else 1

    def submitted_json(self, task_id: str) -> Any:
        """``{"request_id", "output": {"task_id", "task_status": "PENDING"}}``."""
        return {
            "request_id": uuid.uuid4().hex,
            "output": {"task_id": task_id, "task_status": "PENDING"},
        }

    def status_json(self, task_id: str, step: str, urls: list[str]) -> Any:
        """``output.task_status``; ``SUCCEEDED`` with ``output.results[].url``."""
        status = {"pending": "PENDING", "running": "RUNNING", "done": "SUCCEEDED"}.get(
            step, "FAILED"
        )
        output: dict[str, Any] = {"task_id": task_id, "task_status": status}
        if step == "done" and "messages" in self.task_bodies[task_id].get("input", {}):
            # The Wan 2.6 models answer in the chat format, one choice per image.
            output["choices"] = [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"image": url, "type": "image"}]},
                }
                for url in urls
            ]
            output["finished"] = True
        elif step == "done":
            output["results"] = [{"orig_prompt": "p", "url": url} for url in urls]
            output["task_metrics"] = {"TOTAL": len(urls), "SUCCEEDED": len(urls), "FAILED": 0}
        elif step == "failed":
            output.update(code="InternalError.Algo", message=self.reason)
        elif step == "refused":
            output.update(code="DataInspectionFailed", message=self.refusal)
        answer: dict[str, Any] = {"request_id": uuid.uuid4().hex, "output": output}
        if step == "done":
            answer["usage"] = {"image_count": len(urls)}
        return answer

    def cancelled_json(self, task_id: str) -> Any:
        """DashScope answers a cancel with its request id."""
        return {"request_id": uuid.uuid4().hex}


# What a DashScope edit's input image may be: a data URI of an image format it reads.
_DATA_URI = re.compile(r"data:image/[a-z0-9.+-]+;base64,(.+)", re.DOTALL)
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\0", b"MM\0*", b"GIF8")


def _real_image(uri: str) -> bool:
    """Whether ``uri`` is a base64 data URI of an image (PNG, JPEG, BMP, TIFF, GIF or WebP)."""
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        return False
    try:
        data = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        return False
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return webp or data.startswith(_SIGNATURES)


def _a_task_model(model: str) -> bool:
    """Whether the text-to-image endpoint knows ``model``: Wan up to 2.5, ``qwen-image``,
    ``qwen-image-plus``."""
    if "qwen-image" in model:
        return model in ("qwen-image", "qwen-image-plus")
    return "wan" in model and "wan2.6" not in model


# The sizes of qwen-image-max and the dated ids; the docs give 4:3 as 1472*1140 in one place
# and 1472*1104 in another, so both are taken.
_QWEN_SIZES = {
    (1664, 928),
    (1472, 1140),
    (1472, 1104),
    (1328, 1328),
    (1140, 1472),
    (1104, 1472),
    (928, 1664),
}


def _user_content(body: dict[str, Any], family: str) -> list[dict[str, Any]] | str:
    """The content parts of a messages-format body's one user message, or what DashScope would
    refuse in it (a model not of ``family``, another shape of message)."""
    model = body.get("model")
    if not isinstance(model, str) or family not in model:
        return f"Model not exist: {model}"
    given = body.get("input")
    messages = given.get("messages") if isinstance(given, dict) else None
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        return "input.messages must be one user message"
    content = messages[0].get("content") if messages[0].get("role") == "user" else None
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        return "input.messages must be one user message with a list of content parts"
    return content


def _synchronous_problem(body: dict[str, Any]) -> str:
    """What DashScope would refuse in a synchronous call ("" when nothing)."""
    content = _user_content(body, "qwen-image")
    if isinstance(content, str):
        return content
    model = body["model"]
    if not content or set(content[-1]) != {"text"}:
        return "the content must end with one text part"
    images = content[:-1]
    edit, series_2 = "qwen-image-edit" in model, "qwen-image-2.0" in model
    least, most = (1, 3) if edit else (0, 3) if series_2 else (0, 0)
    if not least <= len(images) <= most:
        return f"the content must hold {least} to {most} images, not {len(images)}"
    if any(set(part) != {"image"} or not _real_image(part["image"]) for part in images):
        return "each image before the text must be a valid image URL or base64 data URI"
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        return "parameters must be an object"
    sized_edit = "qwen-image-edit-plus" in model or "qwen-image-edit-max" in model
    n = parameters.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= (6 if sized_edit or series_2 else 1):
        return f"parameters.n is out of range: {n}"
    if "size" in parameters:
        match = re.fullmatch(r"(\d+)\*(\d+)", str(parameters["size"]))
        width, height = (int(side) for side in match.groups()) if match else (0, 0)
        if edit and not sized_edit:
            return f"the model {model} does not support a custom size"
        if edit or series_2:
            fits = all(512 <= side <= 2048 for side in (width, height))
        else:
            fits = (width, height) in _QWEN_SIZES
        if not fits:
            return f"parameters.size is invalid: {parameters['size']}"
    seed = parameters.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed <= 2147483647:
        return f"parameters.seed is out of range: {seed}"
    return ""


def _wan_problem(body: dict[str, Any]) -> str:
    """What DashScope would refuse in a Wan 2.6 submission ("" when nothing)."""
    content = _user_content(body, "wan2.6")
    if isinstance(content, str):
        return content
    model = body["model"]
    texts = [part for part in content if set(part) == {"text"}]
    images = [part for part in content if set(part) == {"image"}]
    if len(texts) != 1 or len(texts) + len(images) != len(content):
        return "the content must hold one text part and image parts only"
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        return "parameters must be an object"
    if "image" not in model:
        allowed = range(0, 1)
    else:
        allowed = range(0, 2) if parameters.get("enable_interleave", False) else range(1, 5)
    if len(images) not in allowed:
        return f"{model} takes {allowed.start} to {allowed.stop - 1} images, not {len(images)}"
    if not all(_real_image(part["image"]) for part in images):
        return "each image must be a valid image URL or base64 data URI"
    n = parameters.get("n", 4)
    if not isinstance(n, int) or not 1 <= n <= 4:
        return f"parameters.n is out of range: {n}"
    if "size" in parameters:
        match = re.fullmatch(r"(\d+)\*(\d+)", str(parameters["size"]))
        width, height = (int(side) for side in match.groups()) if match else (0, 0)
        least = 768 * 768 if "image" in model else 1280 * 1280
        if not (
            least <= width * height <= 1440 * 1440 and max(width, height) <= 4 * min(width, height)
        ):
            return f"parameters.size is invalid: {parameters['size']}"
    seed = parameters.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed <= 2147483647:
        return f"parameters.seed is out of range: {seed}"
    return ""
