"""Fake asynchronous task APIs: submit a task, poll it, cancel it (ModelScope, DashScope).

Each submitted task follows the fake's ``plan``, one step per poll (the last step repeats):
``"pending"``, ``"running"``, ``"done"``, ``"failed"``, ``"refused"`` (moderation), or an
``Answer`` sent as it is (a 429 with ``Retry-After``, a 500). ``plan = ["pending"]`` is a task
that never finishes; ``next_plans`` gives the next tasks plans of their own. With
``expire_results`` a result link downloads once, then is 403, as a signed link that has expired.
``polls`` and ``cancels`` record what the gateway asked.
"""

from __future__ import annotations

import itertools
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
            task_id = f"{uuid.uuid4().hex[:8]}-{next(_task_numbers)}"
            self.tasks[task_id] = deque(self.next_plans.pop(0) if self.next_plans else self.plan)
            self.task_bodies[task_id] = recorded.json
            return Answer(json=self.submitted_json(task_id))
        return Answer(404, self.error_json(404, f"no endpoint at {path}"))

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
    """DashScope image synthesis, async: ``output.task_id``, then ``output.task_status``.

    The submission must carry ``X-DashScope-Async: enable``; otherwise 403 as the service does
    (``AccessDenied``: synchronous calls are not supported).
    """

    image_prefix = "ds"
    submit_path = "/api/v1/services/aigc/text2image/image-synthesis"
    tasks_path = "/api/v1/tasks/"

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        if recorded.method == "POST" and recorded.path.endswith(self.submit_path):
            if recorded.headers.get("x-dashscope-async") != "enable":
                refusal = "current user api does not support synchronous calls"
                return Answer(403, self.error_json(403, refusal))
        return super()._choose(recorded, valid)

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
        if step == "done":
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
