"""Black Forest Labs' API (api.bfl.ai): ``POST /v1/{model}`` with ``x-key``, then ``polling_url``.

Shapes as providers.md §2 gives them: the submission answers ``id`` and ``polling_url``
(``.../v1/get_result?id=...``); a poll answers ``status`` ``Pending`` (with ``progress``),
``Ready`` (``result.sample``, a signed link), ``Error``, ``Content Moderated`` or ``Request
Moderated`` (a 200 answer, not an HTTP error), or ``Task not found``. Errors carry ``detail``.
BFL has no cancel call.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from .origin import FakeOrigin
from .providers import Answer, Recorded
from .task_service import DONE, FAILED, MODERATED, FakeTask, FakeTaskService

DEFAULT_MODERATION_REASON = "Derivative Works Filter"


class FakeBFL(FakeTaskService):
    """BFL's FLUX API: submit to ``/v1/{model}``, poll ``/v1/get_result?id=``.

    ``polling_host``: the host name its polling URLs carry (BFL's may name another host).
    """

    image_prefix = "bfl"

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(image_host, host, **listening)
        self.polling_host = self.host

    def key_of(self, headers: dict[str, str]) -> str | None:
        """The ``x-key`` header."""
        return headers.get("x-key") or None

    def error_json(self, status: int, message: str) -> Any:
        """BFL's (FastAPI's) error body."""
        return {"detail": message}

    def route_of(self, recorded: Recorded) -> tuple[str, str]:
        """``POST /v1/{model}`` submits; ``GET /v1/get_result?id=`` polls."""
        path = recorded.path.rstrip("/")
        if recorded.method == "GET" and path == "/v1/get_result":
            return "poll", parse_qs(recorded.query).get("id", [""])[0]
        parts = path.split("/")
        if recorded.method == "POST" and len(parts) == 3 and parts[1] == "v1" and parts[2]:
            return "submit", parts[2]
        return "none", ""

    def submitted(self, task: FakeTask, recorded: Recorded) -> Answer:
        """``id``, ``polling_url`` and the cost fields."""
        return Answer(
            json={
                "id": task.id,
                "polling_url": f"http://{self.polling_host}:{self.port}/v1/get_result?id={task.id}",
                "cost": 4.0,
                "input_mp": 0.0,
                "output_mp": 1.0,
            }
        )

    def polled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The task's status as BFL words it."""
        phase = task.phase()
        answer: dict[str, Any] = {"id": task.id, "status": "Pending", "result": None}
        if phase in ("queued", "running"):
            answer["progress"] = None if phase == "queued" else task.percent() / 100
        elif phase == DONE:
            prompt = task.body.get("prompt", "") if isinstance(task.body, dict) else ""
            answer["status"] = "Ready"
            answer["result"] = {
                "sample": task.image_urls[0] if task.image_urls else self.image_url(task),
                "prompt": prompt,
                "seed": task.body.get("seed", 42),
                "start_time": 1.7e9,
                "end_time": 1.7e9 + 6.1,
                "duration": 6.1,
            }
        elif phase == MODERATED:
            answer["status"] = "Content Moderated"
            answer["details"] = {
                "Moderation Reasons": [task.script.reason or DEFAULT_MODERATION_REASON]
            }
        elif phase == FAILED:
            answer["status"] = "Error"
            answer["details"] = {"error": task.script.reason or "generation failed"}
        return Answer(json=answer)

    def unknown_task(self, task_id: str) -> Answer:
        """``Task not found``, in a 200 answer as the OpenAPI schema has it."""
        return Answer(json={"id": task_id, "status": "Task not found"})

    @staticmethod
    def error_answer(status: int, message: str, **headers: str) -> Answer:
        """An error answer ``{"detail": message}`` with this status and headers."""
        return Answer(status, {"detail": message}, headers=headers)
