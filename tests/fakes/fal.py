"""fal's queue (queue.fal.run): submit to ``/{app_id}``, then status, result and cancel URLs.

Shapes as providers.md §4 gives them: ``Authorization: Key ...``; the submission answers
``request_id``, ``status_url``, ``response_url`` and ``cancel_url``, on the app's path without
its subpath (``fal-ai/flux/dev`` -> ``fal-ai/flux/requests/{id}``); a status is ``IN_QUEUE``
(``queue_position``), ``IN_PROGRESS`` (``logs`` with ``?logs=1``) or ``COMPLETED``; the result is
``images[].url`` with ``has_nsfw_concepts``; a failed run is ``COMPLETED`` and its result read
answers an error (``detail``, ``X-Fal-Error-Type``); a cancel (``PUT``) works while queued.
"""

from __future__ import annotations

import re
from typing import Any

from .providers import Answer, Recorded
from .task_service import DONE, FAILED, MODERATED, FakeTask, FakeTaskService

_REQUEST = re.compile(
    r"^/(?P<app>[^/]+/[^/]+)/requests/(?P<id>[0-9a-f-]+)(?P<tail>/status|/cancel)?$"
)


def key_header(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Key <key>`` header."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    return key.strip() or None if scheme == "Key" else None


class FakeFal(FakeTaskService):
    """fal's queue API for any app id."""

    image_prefix = "fal"

    def key_of(self, headers: dict[str, str]) -> str | None:
        """The key of ``Authorization: Key <key>``."""
        return key_header(headers.get("authorization"))

    def error_json(self, status: int, message: str) -> Any:
        """fal's error body."""
        return {"detail": message}

    def route_of(self, recorded: Recorded) -> tuple[str, str]:
        """Status (GET .../status), result (GET .../requests/{id}), cancel (PUT .../cancel)."""
        path = recorded.path.rstrip("/")
        found = _REQUEST.match(path)
        if found:
            tail, method = found.group("tail"), recorded.method
            route = {
                ("/status", "GET"): "poll",
                (None, "GET"): "result",
                ("/cancel", "PUT"): "cancel",
            }.get((tail, method), "none")
            return route, found.group("id")
        if recorded.method == "POST" and path.count("/") >= 2:
            return "submit", path.lstrip("/")
        return "none", ""

    def submitted(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The request id and its URLs (on the app's path, without the subpath)."""
        app = "/".join(recorded.path.strip("/").split("/")[:2])
        base = self.url(f"{app}/requests/{task.id}")
        return Answer(
            json={
                "request_id": task.id,
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
                "queue_position": task.queue_position(),
            }
        )

    def polled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """``IN_QUEUE`` (202), ``IN_PROGRESS`` (202) or ``COMPLETED`` (200)."""
        phase = task.phase()
        response_url = self.url(recorded.path.rsplit("/status", 1)[0].lstrip("/"))
        status: dict[str, Any] = {"response_url": response_url}
        if phase == "queued":
            status.update(status="IN_QUEUE", queue_position=task.queue_position())
            return Answer(202, status)
        if phase == "running":
            logs = None
            if "logs=1" in recorded.query:
                message = f"{task.percent()}%|step {task.polls}"
                logs = [{"timestamp": "2026-07-14T09:12:04", "level": "INFO", "message": message}]
            status.update(status="IN_PROGRESS", logs=logs)
            return Answer(202, status)
        status.update(status="COMPLETED", logs=None, metrics={"inference_time": 1.3})
        return Answer(json=status)

    def result(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The model's output once completed; an error while running or when the run failed."""
        phase = task.phase()
        if phase in ("queued", "running"):
            return Answer(400, {"detail": "Request is still in progress"})
        if phase == "cancelled":
            return Answer(400, {"detail": "Request was cancelled"})
        if phase == FAILED:
            reason = task.script.reason or "Internal error while running the model"
            return Answer(500, {"detail": reason}, headers={"X-Fal-Error-Type": "internal_error"})
        body = task.body if isinstance(task.body, dict) else {}
        count = body.get("num_images", 1)
        count = count if isinstance(count, int) and count > 0 else 1
        if not task.image_urls:
            for _ in range(count):
                self.image_url(task)
        flagged = phase == MODERATED
        assert flagged or phase == DONE
        return Answer(
            json={
                "images": [
                    {"url": url, "width": 1024, "height": 1024, "content_type": "image/png"}
                    for url in task.image_urls
                ],
                "seed": body.get("seed", 123),
                "has_nsfw_concepts": [flagged] * len(task.image_urls),
                "prompt": body.get("prompt", ""),
                "timings": {"inference": 1.2},
            }
        )

    def cancelled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """202 while queued or running; 400 ``ALREADY_COMPLETED`` after."""
        if task.phase() in ("queued", "running"):
            task.cancelled = True
            return Answer(202, {"status": "CANCELLATION_REQUESTED"})
        return Answer(400, {"status": "ALREADY_COMPLETED"})

    @staticmethod
    def error_answer(status: int, message: str, **headers: str) -> Answer:
        """An error ``{"detail": message}`` with this status and headers."""
        return Answer(status, {"detail": message}, headers=headers)
