"""A configured provider group: its API, its keys, and failover from one key to the next."""

from __future__ import annotations

import asyncio
import json
import logging
import re

from tornado.httpclient import HTTPResponse

from tornado_imagegate import errors, keys
from tornado_imagegate.config import ProviderGroup
from tornado_imagegate.errors import NO_RETRY, GatewayError, UpstreamError
from tornado_imagegate.keys import KeyPool
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.openai_api import ImageRequest
from tornado_imagegate.providers import (
    ProviderAnswerError,
    ProviderApi,
    ProviderCall,
    ProviderImage,
)
from tornado_imagegate.upstream import Upstream, retry_after_seconds

logger = logging.getLogger(__name__)

REASON_CHARS = 200
# Statuses that say the request itself is wrong (size, prompt, content filter): other keys would
# get the same answer, so the client hears it at once.
REJECTED = frozenset({400, 413, 415, 422})


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
    message = " ".join(message.split())
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    message = re.sub(r"\b(sk|key|Bearer)[-_ ]?[A-Za-z0-9_\-]{12,}", "[redacted]", message)
    if len(message) > REASON_CHARS:
        message = message[: REASON_CHARS - 1] + "…"
    return f"HTTP {response.code}" + (f": {message}" if message else "")


class GroupProvider:
    """Asks one provider group for images, rotating and failing over between its keys."""

    def __init__(
        self,
        group: ProviderGroup,
        api: ProviderApi,
        upstream: Upstream,
        timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.group = group
        self.api = api
        self.upstream = upstream
        self.timeout = timeout
        self.keys = KeyPool(group.keys)
        self.metrics = metrics

    def rest(self, index: int, seconds: float, reason: str) -> None:
        """Put a failed key to rest, and count it."""
        self.keys.rest(index, seconds)
        if self.metrics is not None:
            self.metrics.key_rested(self.group.name, reason)

    async def generate(self, request: ImageRequest, prompt: str) -> list[ProviderImage]:
        """Make ``request.n`` images, in as few requests as the API allows, within the deadline."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        size = self.api.fit_size(request.model, request.width, request.height)
        per_call = max(1, self.api.images_per_call(request.model))
        counts = [min(per_call, request.n - done) for done in range(0, request.n, per_call)]
        if len(counts) == 1:  # the usual case: one request, no extra task
            return await self._call(request, prompt, counts[0], size, deadline)
        batches = await asyncio.gather(
            *[self._call(request, prompt, count, size, deadline) for count in counts]
        )
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
    ) -> list[ProviderImage]:
        """One request, tried with each available key in turn until one succeeds."""
        order = self.keys.order()
        if not order:
            wait = self.keys.next_available_in()
            raise self._error(
                502,
                "upstream_error",
                f"all {len(self.keys)} keys are resting after recent failures; "
                f"the next is available in {wait:.0f}s.",
            )
        last_reason = "no key was tried"
        for index, key in order:
            http_request = self.api.build(
                ProviderCall(self.group.endpoint, key, request.model, request, prompt, count, size)
            )
            try:
                response = await self.upstream.fetch(http_request, deadline)
            except UpstreamError as exc:
                if exc.kind == "timeout":
                    raise self._error(
                        504, "upstream_timeout", f"no answer within {self.timeout:g}s."
                    ) from None
                self.rest(index, keys.COOLDOWN_TRANSIENT, exc.kind)
                last_reason = errors.from_upstream(exc, "the provider").message
                logger.warning(
                    "%s key #%d failed (%s); trying the next", self.group.name, index + 1, exc.kind
                )
                continue
            code = response.code
            if 200 <= code < 300:
                try:
                    return self.api.parse(response)
                except ProviderAnswerError as exc:
                    raise self._error(502, "upstream_error", exc.reason[:REASON_CHARS]) from None
            reason = short_reason(response, self.group.keys)
            if code in REJECTED:
                raise self._error(400, "upstream_rejected", f"the request was refused ({reason}).")
            if code == 429:
                wait = retry_after_seconds(response) or keys.COOLDOWN_RATE_LIMITED
                self.rest(index, wait, "rate_limited")
            elif code in (401, 403):
                self.rest(index, keys.COOLDOWN_AUTH, "unauthorized")
            elif code == 408 or code >= 500:
                wait = retry_after_seconds(response) or keys.COOLDOWN_TRANSIENT
                self.rest(index, wait, f"http_{code}")
            else:
                raise self._error(502, "upstream_error", f"unexpected answer ({reason}).")
            last_reason = reason
            logger.warning(
                "%s key #%d failed (HTTP %d); trying the next", self.group.name, index + 1, code
            )
        raise self._error(
            502,
            "upstream_error",
            f"all {len(order)} available keys failed; last: {last_reason}",
        )
