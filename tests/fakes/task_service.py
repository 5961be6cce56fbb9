"""What the fakes of asynchronous task APIs share: a submission answered with a task, then polls.

Each task follows a ``TaskScript`` (polls answered "still running", then an outcome), so a test
says what the next task does and the service's own shapes (``bfl``, ``replicate``, ``fal``)
answer accordingly. Polls may be overridden one by one (a 429 with ``Retry-After``), and the
service records every poll and cancel, so a test can see that polling stopped.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tornado.web import RequestHandler

from .origin import FakeOrigin
from .providers import Answer, FakeUpstream, Recorded

_image_numbers = itertools.count(1)

DONE, FAILED, MODERATED, NEVER = "done", "failed", "moderated", "never"


@dataclass
class TaskScript:
    """How one task runs: ``pending`` polls answer "still running", then the ``outcome``.

    The first ``queued`` of the pending polls say the task waits in a queue (position counting
    down); the others report a percent that grows. ``never`` tasks never finish. ``expires``:
    the image link stops working once it has been downloaded once (as the providers' short-lived
    links do soon after the task).
    """

    pending: int = 2
    outcome: str = DONE
    reason: str = ""
    queued: int = 0
    expires: bool = False


@dataclass
class FakeTask:
    """A task the fake accepted."""

    id: str
    key: str | None
    body: Any
    script: TaskScript
    polls: int = 0
    cancelled: bool = False
    image_urls: list[str] = field(default_factory=list)

    def phase(self) -> str:
        """``queued``, ``running``, or the script's outcome (``cancelled`` once cancelled)."""
        if self.cancelled:
            return "cancelled"
        if self.script.outcome == NEVER or self.polls <= self.script.pending:
            return "queued" if self.polls <= self.script.queued else "running"
        return self.script.outcome

    def queue_position(self) -> int:
        """Where the task stands in the queue (0: next)."""
        return max(0, self.script.queued - self.polls)

    def percent(self) -> int:
        """How far a running task is, growing with each poll."""
        if self.script.outcome == NEVER:
            return min(95, 10 * self.polls)
        return min(99, round(100 * self.polls / (self.script.pending + 1)))


class FakeTaskService(FakeUpstream):
    """A fake task API: ``submit``, ``poll``, ``cancel`` and ``result`` routes of its own shape.

    ``scripts`` are taken by new tasks in order, then ``script_default``; ``poll_answers`` answer
    the next polls instead of the task (a 429, a 5xx); ``script()`` (inherited) answers the next
    submissions instead.
    """

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(host, image_host, **listening)
        self.tasks: dict[str, FakeTask] = {}
        self.scripts: deque[TaskScript] = deque()
        self.script_default = TaskScript()
        self.poll_answers: deque[Answer] = deque()
        self.cancels: list[str] = []

    # --- the test's side -------------------------------------------------------------------

    def next_tasks(self, *scripts: TaskScript) -> None:
        """The scripts of the next tasks, in order."""
        self.scripts.extend(scripts)

    def script_polls(self, *answers: Answer) -> None:
        """Answer the next polls with these, whatever the task is doing."""
        self.poll_answers.extend(answers)

    def submissions(self) -> list[Recorded]:
        """The submissions received, in order."""
        return [r for r in self.requests if self.route_of(r)[0] == "submit"]

    def polls(self) -> list[Recorded]:
        """The polls received (status and result reads), in order."""
        return [r for r in self.requests if self.route_of(r)[0] in ("poll", "result")]

    def only_task(self) -> FakeTask:
        """The one task this fake accepted."""
        assert len(self.tasks) == 1, f"{len(self.tasks)} tasks"
        return next(iter(self.tasks.values()))

    # --- the service's side ----------------------------------------------------------------

    def key_of(self, headers: dict[str, str]) -> str | None:
        """The API key a request carries (each service has its own header)."""
        raise NotImplementedError

    def route_of(self, recorded: Recorded) -> tuple[str, str]:
        """(``submit`` | ``poll`` | ``result`` | ``cancel`` | ``none``, task id or model)."""
        raise NotImplementedError

    def submitted(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The answer to a submission that made ``task``."""
        raise NotImplementedError

    def polled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The answer to a status poll of ``task`` (counted already)."""
        raise NotImplementedError

    def result(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The answer to a result read (services with a result route of its own)."""
        return Answer(404, self.error_json(404, "no result route"))

    def cancelled(self, task: FakeTask, recorded: Recorded) -> Answer:
        """The answer to a cancel (services with a cancel call)."""
        return Answer(404, self.error_json(404, "no cancel route"))

    def unknown_task(self, task_id: str) -> Answer:
        """The answer about a task id this fake never made."""
        return Answer(404, self.error_json(404, f"no task {task_id}"))

    def new_task_id(self) -> str:
        """An id of the service's form."""
        return str(uuid.uuid4())

    def image_url(self, task: FakeTask) -> str:
        """A fresh image for ``task`` on the image host (a link that expires when scripted)."""
        assert self.image_host is not None
        path = f"{self.image_prefix}/{next(_image_numbers)}.png"
        png = self.make_png(next(_image_numbers))
        if task.script.expires:
            self.image_host.serve_once(path, png)
        else:
            self.image_host.serve(path, png)
        url = self.image_host.url(path)
        task.image_urls.append(url)
        self.image_urls.append(url)
        return url

    def _record(self, handler: RequestHandler) -> tuple[Recorded, bool]:
        recorded, valid = super()._record(handler)
        recorded.key = self.key_of(recorded.headers)
        return recorded, valid

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        route, name = self.route_of(recorded)
        if route == "none":
            return Answer(404, self.error_json(404, f"no endpoint at {recorded.path}"))
        if recorded.key is None:
            return Answer(401, self.error_json(401, "no API key"))
        if route == "submit":
            if not valid:
                return Answer(422, self.error_json(422, "the request body is not a JSON object"))
            if self.queue:
                return self.queue.popleft()
            script = self.scripts.popleft() if self.scripts else self.script_default
            task = FakeTask(self.new_task_id(), recorded.key, recorded.json, script)
            self.tasks[task.id] = task
            return self.submitted(task, recorded)
        task = self.tasks.get(name)
        if task is None:
            return self.unknown_task(name)
        if route == "cancel":
            self.cancels.append(task.id)
            return self.cancelled(task, recorded)
        if self.poll_answers:
            return self.poll_answers.popleft()
        if route == "result":
            return self.result(task, recorded)
        task.polls += 1
        return self.polled(task, recorded)
