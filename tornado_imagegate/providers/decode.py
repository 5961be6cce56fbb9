"""Provider answers read off the event loop: a large answer is parsed in a worker process."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from tornado.httpclient import HTTPResponse

from tornado_imagegate.providers import ProviderApi, ProviderImage

logger = logging.getLogger(__name__)

# json.loads and base64 decoding are C code that holds the GIL: a thread does not free the loop.
# With a 60 MB answer, the worst /health latency meanwhile (bench/bench_big_answer.py, median of
# 5 runs) was 753 ms parsed inline, 161 ms in a thread, 109 ms in a worker process. Answers of a
# few KB, the everyday case, stay inline: a round trip would cost more than the parse.
OFFLOAD_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RawAnswer:
    """A picklable stand-in for an HTTPResponse: what a provider's ``parse`` reads."""

    code: int
    body: bytes = field(repr=False)
    headers: dict[str, str]


def parse_in_worker(api: ProviderApi, answer: RawAnswer) -> tuple[list[ProviderImage], int]:
    """Run the API's ``parse`` on an answer; return the images and the process id it ran in."""
    return api.parse(answer), os.getpid()  # type: ignore[arg-type]


_SENDABLE: dict[type, bool] = {}


def can_send(api: ProviderApi) -> bool:
    """Whether an API object can be sent to the worker (checked once per class)."""
    sendable = _SENDABLE.get(type(api))
    if sendable is None:
        try:
            pickle.dumps(api)
            sendable = True
        except (pickle.PicklingError, TypeError, AttributeError):
            logger.warning("%s cannot be sent to a worker: parsed inline", type(api).__name__)
            sendable = False
        _SENDABLE[type(api)] = sendable
    return sendable


def _worker_setup() -> None:
    # The parent decides when the worker ends: a Ctrl-C or systemd's SIGTERM reaches the whole
    # process group, and must not break answers still being read during the grace period.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class AnswerDecoder:
    """Parses provider answers: inline below ``min_bytes``, in the worker process above."""

    def __init__(self, min_bytes: int = OFFLOAD_MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self.offloaded = 0
        self.last_worker_pid: int | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._pool_pid = 0

    async def parse(self, api: ProviderApi, response: HTTPResponse) -> list[ProviderImage]:
        """The images of a 2xx answer; ProviderAnswerError when there are none."""
        body = response.body or b""
        if len(body) < self.min_bytes or not can_send(api):
            return api.parse(response)
        answer = RawAnswer(response.code, body, dict(response.headers))
        loop = asyncio.get_running_loop()
        try:
            images, pid = await loop.run_in_executor(self._executor(), parse_in_worker, api, answer)
        except BrokenProcessPool:
            logger.warning("the decoding worker died; this answer is parsed inline")
            self.shutdown()
            return api.parse(response)
        self.offloaded += 1
        self.last_worker_pid = pid
        return images

    def _executor(self) -> ProcessPoolExecutor:
        # A process forked from the one that started the pool (--workers) starts its own.
        if self._pool is None or self._pool_pid != os.getpid():
            # spawn: the worker inherits neither curl's handles nor the event loop.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_setup,
            )
            self._pool_pid = os.getpid()
        return self._pool

    def shutdown(self) -> None:
        """Stop the worker process, if one was started (here)."""
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)


DECODER = AnswerDecoder()


def shutdown() -> None:
    """Stop the shared decoder's worker process (at server stop)."""
    DECODER.shutdown()
