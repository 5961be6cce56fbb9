"""Replicate's predictions API: create (``Prefer: wait`` may finish it at once), get, cancel.

Shapes as providers.md §3 gives them: ``POST /v1/models/{owner}/{name}/predictions`` with
``{"input"}`` or ``POST /v1/predictions`` with ``{"version", "input"}``, bearer key; a
prediction object (``id``, ``status``, ``output``, ``error``, ``logs``, ``urls.get``,
``urls.cancel``) answered 201 on creation; statuses ``starting`` -> ``processing`` ->
``succeeded`` | ``failed`` | ``canceled``; ``output`` a list of URLs or one URL; a safety refusal
is a failed prediction with an NSFW message; a throttled call answers 429 with ``detail``.

An input outside the model's schema is refused before any prediction exists: 422, ``Input
validation failed``, as Replicate answers it. The fake knows one such rule: FLUX 1.1 [pro]'s
``aspect_ratio`` enum, which lacks the 21:9 and 9:21 that FLUX.1 [schnell] and [dev] take.
"""

from __future__ import annotations

import re
from typing import Any

from .origin import FakeOrigin
from .providers import Answer, Recorded, bearer_key
from .task_service import DONE, FAILED, MODERATED, FakeTask, FakeTaskService

NSFW_ERROR = "NSFW content detected. Try running it again, or try a different prompt."
_PREDICTION = re.compile(r"^/v1/predictions/(?P<id>[a-z0-9]+)(?P<cancel>/cancel)?$")
_MODEL = re.compile(r"^/v1/models/(?P<owner>[^/]+)/(?P<name>[^/]+)/predictions$")
# The aspect_ratio enum of a model's input schema (replicate.com/{model}/api), where it is
# narrower than the ratios the FLUX.1 models take.
ASPECT_RATIO_ENUMS = {
    "black-forest-labs/flux-1.1-pro": (
        "custom",
        "1:1",
        "16:9",
        "3:2",
        "2:3",
        "4:5",
        "5:4",
        "9:16",
        "3:4",
        "4:3",
    ),
}


class FakeReplicate(FakeTaskService):
    """Replicate: ``/v1/models/{owner}/{name}/predictions`` or ``/v1/predictions``."""

    image_prefix = "replicate"

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(image_host, host, **listening)
        # Models whose output is one URL rather than a list.
        self.single_output = False

    def key_of(self, headers: dict[str, str]) -> str | None:
        """The bearer token."""
        return bearer_key(headers.get("authorization"))

    def error_json(self, status: int, message: str) -> Any:
        """Replicate's error body (``detail``, with ``title`` and ``status``)."""
        return {"title": "error", "detail": message, "status": status}

    def new_task_id(self) -> str:
        """Replicate's lower-case alphanumeric ids."""
        return super().new_task_id().replace("-", "")[:26]

    def route_of(self, recorded: Recorded) -> tuple[str, str]:
        """Create, get (``GET /v1/predictions/{id}``) and cancel (``POST .../cancel``)."""
        path = recorded.path.rstrip("/")
        found = _PREDICTION.match(path)
        if found:
            if found.group("cancel"):
                return ("cancel" if recorded.method == "POST" else "none"), found.group("id")
            return ("poll" if recorded.method == "GET" else "none"), found.group("id")
        if recorded.method == "POST" and (path == "/v1/predictions" or _MODEL.match(path)):
            return "submit", path
        return "none", ""

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        """A creation whose input the model's schema refuses is a 422, and no prediction."""
        found = _MODEL.match(recorded.path.rstrip("/"))
        if recorded.method == "POST" and found and valid and recorded.key is not None:
            model = f"{found.group('owner')}/{found.group('name')}"
            inputs = recorded.json.get("input")
            ratio = inputs.get("aspect_ratio") if isinstance(inputs, dict) else None
            allowed = ASPECT_RATIO_ENUMS.get(model)
            if allowed and ratio is not None and ratio not in allowed:
                return self.invalid_input(
                    "input.aspect_ratio",
                    "aspect_ratio must be one of the following: "
                    + ", ".join(f'"{value}"' for value in allowed),
                )
        return super()._choose(recorded, valid)

    @staticmethod
    def invalid_input(field: str, description: str) -> Answer:
        """422 ``Input validation failed`` for one field, as Replicate words it."""
        return Answer(
            422,
            {
                "title": "Input validation failed",
                "detail": f"- {field}: {description}",
                "status": 422,
                "invalid_fields": [{"type": "enum", "field": field, "description": description}],
            },
        )

    def prediction(self, task: FakeTask, status: str, **fields: Any) -> dict[str, Any]:
        """A prediction object of ``task`` in ``status``."""
        body = task.body if isinstance(task.body, dict) else {}
        base = self.url(f"v1/predictions/{task.id}")
        prediction = {
            "id": task.id,
            "model": body.get("model", "owner/model"),
            "version": body.get("version", "dp-" + task.id),
            "input": body.get("input", {}),
            "status": status,
            "output": None,
            "error": None,
            "logs": "",
            "created_at": "2026-07-14T09:12:03.221Z",
            "started_at": None,
            "completed_at": None,
            "data_removed": False,
            "metrics": {},
            "urls": {
                "web": f"https://replicate.com/p/{task.id}",
                "get": base,
                "cancel": base + "/cancel",
                "stream": f"https://stream.replicate.com/v1/files/{task.id}",
            },
        }
        prediction.update(fields)
        return prediction

    def state(self, task: FakeTask) -> dict[str, Any]:
        """The prediction as it stands now."""
        phase = task.phase()
        if phase == "queued":
            return self.prediction(task, "starting")
        if phase == "running":
            percent = task.percent()
            steps = f"{percent // 10}/10"
            logs = f"Using seed: 42\n{percent:3d}%|{'#' * (percent // 10):<10}| {steps}\n"
            return self.prediction(task, "processing", logs=logs)
        if phase == "cancelled":
            return self.prediction(task, "canceled")
        if phase == MODERATED:
            return self.prediction(task, "failed", error=task.script.reason or NSFW_ERROR)
        if phase == FAILED:
            reason = task.script.reason or "CUDA out of memory"
            return self.prediction(task, "failed", error=reason, logs=f"Traceback...\n{reason}")
        assert phase == DONE
        if not task.image_urls:
            inputs = task.body.get("input", {}) if isinstance(task.body, dict) else {}
            count = inputs.get("num_outputs", 1) if isinstance(inputs, dict) else 1
            for _ in range(count if isinstance(count, int) and count > 0 else 1):
                self.image_url(task)
        output: Any = task.image_urls[0] if self.single_output else list(task.image_urls)
        return self.prediction(task, "succeeded", output=output, metrics={"predict_time": 1.2})

    def submitted(self, task: FakeTask, recorded: Recorded) -> Answer:
        """201 with the prediction: done at once under ``Prefer: wait`` when the script says so."""
        if task.script.pending == 0 and recorded.headers.get("prefer", "").startswith("wait"):
            task.polls = 1  # the wait saw it through
            return Answer(201, self.state(task))
        return Answer(201, self.prediction(task, "starting"))

    def polled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The prediction."""
        return Answer(json=self.state(task))

    def cancelled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The prediction, now canceled (unless it had finished)."""
        if task.phase() in ("queued", "running"):
            task.cancelled = True
        return Answer(json=self.state(task))

    @staticmethod
    def throttled(retry_after: str | None = "1") -> Answer:
        """429 as Replicate words it, with a ``Retry-After`` when given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        detail = "Request was throttled. Your rate limit resets in ~1s."
        return Answer(429, {"title": "Request was throttled", "detail": detail}, headers=headers)
