"""A configured provider group: its API, its keys, and failover from one key to the next."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable

from tornado.httpclient import HTTPRequest, HTTPResponse

from tornado_imagegate import errors
from tornado_imagegate.config import ProviderGroup
from tornado_imagegate.errors import NO_RETRY, GatewayError, UpstreamError
from tornado_imagegate.keys import DEFAULT_POLICY, CooldownPolicy, KeyPool, Outcome, classify
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.openai_api import ImageRequest
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderApi,
    ProviderCall,
    ProviderImage,
    ProviderRejected,
)
from tornado_imagegate.providers.decode import DECODER, AnswerDecoder
from tornado_imagegate.upstream import FetchGuard, Upstream, retry_after_seconds

logger = logging.getLogger(__name__)

REASON_CHARS = 200
DEFAULT_IMAGE_MAX_BYTES = 32 * 1024 * 1024
# Room in an answer besides its base64 images: JSON fields, a revised prompt, markdown.
ANSWER_SLACK_BYTES = 256 * 1024


def answer_limit(image_max_bytes: int, count: int) -> int:
    """The largest provider answer worth reading for ``count`` images.

    Each image the gateway keeps is at most ``image_max_bytes``, base64 makes 4 bytes of 3; an
    answer larger than that could not be kept anyway. (curl's client-wide limit, 64 MiB, also
    applies.)
    """
    return count * image_max_bytes * 4 // 3 + ANSWER_SLACK_BYTES


def short_reason(response: HTTPResponse, secrets: tuple[str, ...]) -> str:
    """A short reason from a provider's error answer, from its message field only, keys removed.

    Provider bodies are never echoed whole: some quote the request, key included, back.
    """
    message = ""
    try:
        answer = json.loads(response.body or b"")
    except (ValueError, UnicodeDecodeError):
        answer = None
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        for candidate in (error, answer.get("message"), answer.get("detail")):
            if isinstance(candidate, str) and candidate.strip():
                message = candidate
                break
    message = safe_reason(message, secrets)
    return f"HTTP {response.code}" + (f": {message}" if message else "")


def safe_reason(message: str, secrets: tuple[str, ...]) -> str:
    """A provider's message made fit to show: one line, keys removed, at most REASON_CHARS."""
    message = " ".join(message.split())
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    message = re.sub(r"\b(sk|key|Bearer)[-_ ]?[A-Za-z0-9_\-]{12,}", "[redacted]", message)
    if len(message) > REASON_CHARS:
        message = message[: REASON_CHARS - 1] + "…"
    return message


def _blames_key(api: ProviderApi, response: HTTPResponse) -> bool:
    """Whether a refusal is about the key, as an API may say (Gemini answers a bad key 400).

    An API says so with an optional ``key_refused(response) -> bool`` method.
    """
    key_refused = getattr(api, "key_refused", None)
    return bool(key_refused is not None and key_refused(response))


class GroupProvider:
    """Asks one provider group for images, rotating and failing over between its keys."""

    def __init__(
        self,
        group: ProviderGroup,
        api: ProviderApi,
        upstream: Upstream,
        timeout: float,
        metrics: Metrics | None = None,
        *,
        policy: CooldownPolicy = DEFAULT_POLICY,
        image_max_bytes: int = DEFAULT_IMAGE_MAX_BYTES,
        decoder: AnswerDecoder = DECODER,
    ) -> None:
        self.group = group
        self.api = api
        self.upstream = upstream
        self.timeout = timeout
        self.metrics = metrics
        self.image_max_bytes = image_max_bytes
        self.decoder = decoder
        self.keys = KeyPool(group.keys, policy=policy, on_rest=self._rested)

    def _rested(self, index: int, reason: str) -> None:
        logger.warning("%s key #%d rests (%s)", self.group.name, index + 1, reason)
        if self.metrics is not None:
            self.metrics.key_rested(self.group.name, reason)

    async def generate(
        self,
        request: ImageRequest,
        prompt: str,
        on_progress: Callable[[str], None] | None = None,
        deadline: float | None = None,
    ) -> list[ProviderImage]:
        """Make ``request.n`` images, in as few requests as the API allows, within the group's
        timeout from now, and by ``deadline`` (a loop time) if one is given.

        ``on_progress`` hears a line each time a task the provider waits on moves on.
        """
        own_deadline = asyncio.get_running_loop().time() + self.timeout
        deadline = own_deadline if deadline is None else min(deadline, own_deadline)
        size = self.api.fit_size(request.model, request.width, request.height)
        per_call = max(1, self.api.images_per_call(request.model))
        if request.n <= per_call:  # the usual case: one request, no extra task
            return await self._call(
                request, prompt, request.n, size, deadline, request.seed, on_progress
            )
        # Each call's images start at their own seed (seed, seed + 1, ...): calls that all sent
        # the same seed would get the same picture back.
        calls = [
            asyncio.ensure_future(
                self._call(
                    request,
                    prompt,
                    min(per_call, request.n - done),
                    size,
                    deadline,
                    request.seed + done,
                    on_progress,
                )
            )
            for done in range(0, request.n, per_call)
        ]
        try:
            batches = await asyncio.gather(*calls)
        except BaseException:
            # One call failed (or the client left): the others' images would not be used, so
            # they stop now (a task API's tasks are cancelled upstream too).
            for pending in calls:
                pending.cancel()
            raise
        return [image for batch in batches for image in batch]

    def _error(self, status: int, code: str, reason: str, detail: str = "") -> GatewayError:
        return GatewayError(
            status,
            code,
            f"Provider group {self.group.name}: {reason}",
            detail=detail,
            headers=NO_RETRY,
        )

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
        """One request, tried with each usable key in turn until one succeeds."""
        call_with = self._calls(request, prompt, count, size, seed)
        _, response = await self._first_answer(
            call_with, self.api.build, deadline, answer_limit(self.image_max_bytes, count)
        )
        try:
            return await self.decoder.parse(self.api, response)
        except ProviderRejected as exc:
            raise self._error(
                400, "upstream_rejected", f"the request was refused ({exc.reason[:REASON_CHARS]})."
            ) from None
        except ProviderAnswerError as exc:
            raise self._error(502, "upstream_error", exc.reason[:REASON_CHARS]) from None

    def _calls(
        self, request: ImageRequest, prompt: str, count: int, size: tuple[int, int], seed: int
    ) -> Callable[[str], ProviderCall]:
        """The call this group makes with a given key, for ``_first_answer`` to try in turn."""

        def call_with(key: str) -> ProviderCall:
            return ProviderCall(
                self.group.endpoint,
                key,
                request.model,
                request,
                prompt,
                count,
                size,
                seed,
                extra=dict(self.group.extra),
            )

        return call_with

    async def _first_answer(
        self,
        call_with: Callable[[str], ProviderCall],
        build: Callable[[ProviderCall], HTTPRequest],
        deadline: float,
        limit: int,
    ) -> tuple[ProviderCall, HTTPResponse]:
        """The first 2xx answer to a request, tried with each usable key in turn.

        Whether a failure rests the key is KeyPool's decision (keys.py); here only what the
        client hears: failover, 400, 502, 504, or 503 when every key now rests.
        """
        order = self.keys.order()
        last_reason = "no key was tried"
        for index, key in order:
            call = call_with(key)
            http_request = build(call)
            try:
                response = await self.upstream.fetch(
                    http_request, deadline, FetchGuard(max_bytes=limit)
                )
            except UpstreamError as exc:
                self.keys.record_failure(index, classify(exc))
                if exc.kind == "timeout":
                    raise self._error(
                        504, "upstream_timeout", f"no answer within {self.timeout:g}s."
                    ) from None
                if exc.kind == "too_large":
                    raise self._error(
                        502, "upstream_error", "answer larger than the gateway accepts."
                    ) from None
                last_reason = errors.from_upstream(exc, "the provider").message
                logger.warning(
                    "%s key #%d failed (%s); trying the next", self.group.name, index + 1, exc.kind
                )
                continue
            code = response.code
            outcome = classify(code)
            if outcome is Outcome.REJECTED and _blames_key(self.api, response):
                outcome = Outcome.AUTH
            if outcome is Outcome.OK:
                self.keys.record_success(index)
                return call, response
            reason = short_reason(response, self.group.keys)
            if outcome is Outcome.REJECTED:
                raise self._error(400, "upstream_rejected", f"the request was refused ({reason}).")
            if not outcome.fails_over:
                raise self._error(502, "upstream_error", f"unexpected answer ({reason}).")
            self.keys.record_failure(index, outcome, retry_after_seconds(response))
            last_reason = reason
            logger.warning(
                "%s key #%d failed (HTTP %d); trying the next", self.group.name, index + 1, code
            )
        if self.keys.all_resting():
            raise errors.upstream_unavailable(
                f"provider group {self.group.name}", self.keys.next_available_in(), last_reason
            )
        raise self._error(
            502,
            "upstream_error",
            f"all {len(order)} available keys failed; last: {last_reason}",
        )
