"""The task engine: providers whose API answers a submission with a task to poll until it is done.

A task API is described by a ``TaskApi`` (one module per API under ``providers/``, like the
synchronous ``ProviderApi``); ``TaskProvider`` drives it: the submission fails over between the
group's keys exactly as a synchronous call does, then one coroutine per task polls with the key
that submitted, until the task is done, failed or refused, or the request's deadline passes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate.errors import GatewayError, UpstreamError
from tornado_imagegate.openai_api import ImageRequest
from tornado_imagegate.providers import ProviderAnswerError, ProviderCall, ProviderImage
from tornado_imagegate.providers.group import (
    REASON_CHARS,
    GroupProvider,
    answer_limit,
    safe_reason,
    short_reason,
)
from tornado_imagegate.upstream import FetchGuard, retry_after_seconds

logger = logging.getLogger(__name__)

# The polling schedule: the first poll soon, then less and less often.
FIRST_INTERVAL = 0.5
INTERVAL_GROWTH = 1.5
MAX_INTERVAL = 5.0
# An interval the API suggests, or a Retry-After, is honoured up to this (and never past the
# request's deadline).
MAX_SUGGESTED_WAIT = 30.0
# One poll that hangs must not take the whole deadline: it is given up and retried after this.
POLL_FETCH_SECONDS = 30.0
# Polls that fail in a row (5xx, connection errors) before the task is given up as failed.
MAX_POLL_FAILURES = 5
# A cancel call has a short deadline of its own; nobody waits for it.
CANCEL_SECONDS = 5.0


class TaskStatus(enum.StrEnum):
    """Where a task stands, in the gateway's terms (each API maps its own statuses onto these)."""

    QUEUED = "queued"  # accepted, waiting for a worker: poll again
    RUNNING = "running"  # being made: poll again
    DONE = "done"  # finished: its images are in the state, or to be fetched with ``result``
    FAILED = "failed"  # finished without images: 502 with the provider's short reason
    REJECTED = "rejected"  # refused by moderation or a safety check: 400 upstream_rejected


@dataclass(frozen=True)
class TaskHandle:
    """What the engine needs to follow one task: its id and the URLs the API gave for it.

    The URLs are optional: an API that builds them from the id (ModelScope, DashScope) leaves
    them empty; one that returns them (BFL's ``polling_url``, Replicate's ``urls``, fal's
    ``status_url``/``response_url``/``cancel_url``) fills them in.
    """

    task_id: str
    poll_url: str = ""
    cancel_url: str = ""
    result_url: str = ""


@dataclass(frozen=True)
class TaskState:
    """What one answer (submission, poll or result) says about a task."""

    status: TaskStatus
    # Set by read_submission; a poll answer may set it again to move the task's URLs.
    handle: TaskHandle | None = None
    images: tuple[ProviderImage, ...] = ()
    # Short, human-readable; shown to the client for FAILED and REJECTED (keys are removed).
    reason: str = ""
    percent: int | None = None
    queue_position: int | None = None
    # Seconds until the next poll, when the API suggests it.
    poll_after: float | None = None

    @property
    def finished(self) -> bool:
        """Whether nothing more is to be polled for."""
        return self.status in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.REJECTED)


class TaskApi(Protocol):
    """An asynchronous provider API: submit a task, poll it, fetch its result, cancel it.

    The engine (``TaskProvider``) does all the HTTP, timing, key handling and error mapping;
    an implementation only builds requests and reads answers, and never raises for a 2xx answer
    it understands. The rules:

    - ``submit`` builds the request that creates the task (``call.key`` authenticates it; merge
      ``call.extra`` into the body). The engine sends it through the group's key failover: a
      non-2xx answer never reaches ``read_submission``.
    - ``read_submission`` reads the 2xx answer: usually a QUEUED or RUNNING state carrying the
      task's ``handle``; it may also be DONE with images at once (Replicate's ``Prefer: wait``),
      or FAILED / REJECTED. Raise ProviderAnswerError (short reason) when the answer names no task.
    - ``poll(handle, call)`` builds the status request (same ``call``, so the same key); the
      engine sends it after a wait and reads a 2xx answer with ``read_poll``. 429 and 5xx poll
      answers are handled by the engine (wait, retry); any other non-2xx fails the request.
    - ``read_poll`` maps the API's status onto TaskStatus. Unknown statuses are QUEUED or RUNNING
      (keep polling: the deadline bounds it), never FAILED. Fill ``percent`` / ``queue_position``
      when the API reports them (a streaming client sees a line when they change) and
      ``poll_after`` when it suggests an interval. A DONE state carries its images; a DONE state
      without images makes the engine call ``result``.
    - ``result(handle, call)`` builds the request that fetches a finished task's images when the
      poll answer does not carry them (fal's ``response_url``); None when the poll answer always
      does. ``read_result`` reads its 2xx answer into a DONE (or FAILED / REJECTED) state.
    - ``cancel(handle, call)`` builds the request that cancels the task, or None when the API has
      none. The engine sends it, without waiting, when the client leaves or the deadline passes.

    ``TaskApiDefaults`` gives ``result``, ``read_result`` and ``cancel`` for APIs without them.
    """

    def fit_size(self, model: str, width: int, height: int) -> tuple[int, int]:
        """The size the API can make that is nearest the one asked for."""

    def images_per_call(self, model: str) -> int:
        """How many images one task may make."""

    def submit(self, call: ProviderCall) -> HTTPRequest:
        """The HTTP request that creates a task making ``call.count`` images."""

    def read_submission(self, response: HTTPResponse) -> TaskState:
        """The task a 2xx submission answer created (with its handle), or its outcome at once."""

    def poll(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest:
        """The HTTP request that asks how the task stands."""

    def read_poll(self, response: HTTPResponse) -> TaskState:
        """The state a 2xx poll answer reports."""

    def result(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """The request for a finished task's images, when its poll answer does not carry them."""

    def read_result(self, response: HTTPResponse) -> TaskState:
        """The state (DONE with images, FAILED or REJECTED) a 2xx result answer reports."""

    def cancel(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """The request that cancels the task, or None when the API cannot cancel."""


class TaskApiDefaults:
    """``result``, ``read_result`` and ``cancel`` for task APIs whose polls carry the images."""

    def result(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """None: the poll answer of a finished task carries its images."""
        return None

    def read_result(self, response: HTTPResponse) -> TaskState:
        """Never called when ``result`` is None."""
        raise ProviderAnswerError("this API has no result request")

    def cancel(self, handle: TaskHandle, call: ProviderCall) -> HTTPRequest | None:
        """None: the API has no cancel call."""
        return None


# Words in a failed task's code or message that say it was refused by a content check (APIs
# report moderation as a failed status with a code, such as DashScope's DataInspectionFailed).
_REFUSAL_WORDS = re.compile(
    r"moderat|safety|unsafe|nsfw|inappropriate|sensitive|inspection|content.?polic|"
    r"prohibited|审核|敏感|违规|不合规",
    re.IGNORECASE,
)


def looks_refused(*texts: object) -> bool:
    """Whether a failed task's code or message says a content check refused it."""
    return any(isinstance(text, str) and _REFUSAL_WORDS.search(text) for text in texts)


def progress_line(state: TaskState) -> str:
    """``"queued: position 3"``, ``"running: 40%"``: how a waiting task stands, in one line."""
    if state.status is TaskStatus.QUEUED and state.queue_position is not None:
        return f"queued: position {state.queue_position}"
    if state.status is TaskStatus.RUNNING and state.percent is not None:
        return f"running: {state.percent}%"
    return state.status.value


@dataclass
class _Progress:
    """Tells a listener how a task stands, once per change rather than once per poll."""

    listener: Callable[[str], None] | None
    last: str = ""

    def __call__(self, state: TaskState) -> None:
        if self.listener is None or state.finished:
            return
        line = progress_line(state)
        if line != self.last:
            self.last = line
            self.listener(line + "\n")


@dataclass
class _Schedule:
    """When to poll next: short at first, growing, or what the API or Retry-After asks."""

    interval: float = FIRST_INTERVAL
    # Polls failed in a row; and the wait the last answer asked for (Retry-After), if any.
    failures: int = 0
    suggested: float | None = None

    def next_wait(self, suggested: float | None = None) -> float:
        """The wait before the next poll; the interval grows for the one after."""
        wait = self.interval
        if suggested is not None and suggested > 0:
            wait = min(suggested, MAX_SUGGESTED_WAIT)
        self.interval = min(MAX_INTERVAL, self.interval * INTERVAL_GROWTH)
        return wait


class TaskProvider(GroupProvider):
    """Asks a task API's group for images: submit (with key failover), then poll until done."""

    api: TaskApi  # type: ignore[assignment]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # Cancel calls in flight: referenced until they end, so they are not collected early.
        self._cancels: set[asyncio.Task[None]] = set()

    async def _call(
        self,
        request: ImageRequest,
        prompt: str,
        count: int,
        size: tuple[int, int],
        deadline: float,
        seed: int,
        on_progress: Callable[[str], None] | None = None,
    ) -> list[ProviderImage]:
        """One task: submitted with each usable key in turn, then followed to its end."""
        call_with = self._calls(request, prompt, count, size, seed)
        limit = answer_limit(self.image_max_bytes, count)
        call, response = await self._first_answer(call_with, self.api.submit, deadline, limit)
        state = self._read(self.api.read_submission, response)
        if state.finished:
            return await self._outcome(state, None, call, deadline, limit)
        if state.handle is None:
            raise self._error(502, "upstream_error", "the submission answer names no task.")
        return await self._follow(
            state, state.handle, call, deadline, limit, _Progress(on_progress)
        )

    async def _follow(
        self,
        state: TaskState,
        handle: TaskHandle,
        call: ProviderCall,
        deadline: float,
        limit: int,
        progress: _Progress,
    ) -> list[ProviderImage]:
        """Poll the task until it ends; cancel it upstream when the client leaves or time is up."""
        schedule = _Schedule()
        wait = schedule.next_wait(state.poll_after)
        progress(state)
        loop = asyncio.get_running_loop()
        try:
            while True:
                if loop.time() + wait >= deadline:
                    await asyncio.sleep(max(0.0, deadline - loop.time()))
                    raise self._timed_out(handle, call)
                await asyncio.sleep(wait)
                polled = await self._poll(handle, call, deadline, limit, schedule)
                if polled is None:  # a 429, 5xx or lost connection: wait and ask again
                    wait = schedule.next_wait(schedule.suggested)
                    continue
                state = polled
                handle = state.handle or handle
                progress(state)
                if state.finished:
                    return await self._outcome(state, handle, call, deadline, limit)
                wait = schedule.next_wait(state.poll_after)
        except asyncio.CancelledError:
            logger.info("%s: client left; task %s abandoned", self.group.name, handle.task_id)
            self._cancel(handle, call)
            raise
        except GatewayError as exc:
            # Given up while the task may still run upstream (the deadline, polls that kept
            # failing, a poll refused): cancel it, so it costs nothing more there.
            if not state.finished:
                if exc.status != 504:
                    logger.info("%s: task %s given up", self.group.name, handle.task_id)
                self._cancel(handle, call)
            raise

    async def _poll(
        self,
        handle: TaskHandle,
        call: ProviderCall,
        deadline: float,
        limit: int,
        schedule: _Schedule,
    ) -> TaskState | None:
        """One poll: the task's state, or None when the answer says to wait and ask again."""
        loop = asyncio.get_running_loop()
        schedule.suggested = None
        try:
            response = await self.upstream.fetch(
                self.api.poll(handle, call),
                min(deadline, loop.time() + POLL_FETCH_SECONDS),
                FetchGuard(max_bytes=limit),
            )
        except UpstreamError as exc:
            if exc.kind == "too_large":
                raise self._error(
                    502, "upstream_error", "answer larger than the gateway accepts."
                ) from None
            if loop.time() >= deadline:
                raise self._timed_out(handle, call) from None
            self._poll_failed(handle, exc.kind, schedule)
            return None
        if response.code == 429:
            schedule.suggested = retry_after_seconds(response)
            logger.info("%s: poll of task %s throttled", self.group.name, handle.task_id)
            return None
        if response.code >= 500:
            schedule.suggested = retry_after_seconds(response)
            self._poll_failed(handle, f"HTTP {response.code}", schedule)
            return None
        if not 200 <= response.code < 300:
            reason = short_reason(response, self.group.keys)
            raise self._error(502, "upstream_error", f"polling the task failed ({reason}).")
        schedule.failures = 0
        return self._read(self.api.read_poll, response)

    def _poll_failed(self, handle: TaskHandle, what: str, schedule: _Schedule) -> None:
        """Count a poll that got no usable answer; after too many in a row, give the task up."""
        schedule.failures += 1
        logger.warning(
            "%s: poll %d of task %s failed (%s)",
            self.group.name,
            schedule.failures,
            handle.task_id,
            what,
        )
        if schedule.failures >= MAX_POLL_FAILURES:
            raise self._error(
                502,
                "upstream_error",
                f"polling the task failed {schedule.failures} times ({what}).",
            )

    async def _outcome(
        self,
        state: TaskState,
        handle: TaskHandle | None,
        call: ProviderCall,
        deadline: float,
        limit: int,
    ) -> list[ProviderImage]:
        """The images of a finished task, or the error its end means for the client."""
        if state.status is TaskStatus.DONE and not state.images and handle is not None:
            result = self.api.result(handle, call)
            if result is not None:
                state = await self._fetch_result(result, deadline, limit)
        if state.status is TaskStatus.REJECTED:
            reason = self._reason(state, "refused by the provider's content check")
            raise self._error(400, "upstream_rejected", f"the request was refused ({reason}).")
        if state.status is TaskStatus.FAILED:
            reason = self._reason(state, "no reason given")
            raise self._error(502, "upstream_error", f"the task failed ({reason}).")
        if not state.images:
            raise self._error(502, "upstream_error", "the finished task holds no image.")
        return list(state.images)

    async def _fetch_result(self, request: HTTPRequest, deadline: float, limit: int) -> TaskState:
        try:
            response = await self.upstream.fetch(request, deadline, FetchGuard(max_bytes=limit))
        except UpstreamError as exc:
            if exc.kind == "timeout":
                raise self._error(
                    504, "upstream_timeout", f"no answer within {self.timeout:g}s."
                ) from None
            raise self._error(
                502, "upstream_error", "the task's result could not be fetched."
            ) from None
        if not 200 <= response.code < 300:
            reason = short_reason(response, self.group.keys)
            raise self._error(502, "upstream_error", f"the task's result failed ({reason}).")
        return self._read(self.api.read_result, response)

    def _read(self, read: Callable[[HTTPResponse], TaskState], response: HTTPResponse) -> TaskState:
        try:
            return read(response)
        except ProviderAnswerError as exc:
            raise self._error(502, "upstream_error", exc.reason[:REASON_CHARS]) from None

    def _reason(self, state: TaskState, fallback: str) -> str:
        return safe_reason(state.reason, self.group.keys) or fallback

    def _timed_out(self, handle: TaskHandle, call: ProviderCall) -> GatewayError:
        """The 504 of a task still unfinished at the deadline (``_follow`` cancels it upstream)."""
        logger.info("%s: task %s unfinished at the deadline", self.group.name, handle.task_id)
        return self._error(
            504, "upstream_timeout", f"the task was not finished within {self.timeout:g}s."
        )

    def _cancel(self, handle: TaskHandle, call: ProviderCall) -> None:
        """Send the API's cancel call for a task nobody waits for any more, without waiting."""
        request = self.api.cancel(handle, call)
        if request is None:
            return
        sending = asyncio.get_running_loop().create_task(self._send_cancel(request, handle))
        self._cancels.add(sending)
        sending.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, request: HTTPRequest, handle: TaskHandle) -> None:
        deadline = asyncio.get_running_loop().time() + CANCEL_SECONDS
        try:
            response = await self.upstream.fetch(request, deadline)
        except UpstreamError as exc:
            logger.info(
                "%s: cancelling task %s failed (%s)", self.group.name, handle.task_id, exc.kind
            )
            return
        logger.info(
            "%s: task %s cancelled (HTTP %d)", self.group.name, handle.task_id, response.code
        )
