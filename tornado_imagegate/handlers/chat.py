"""``POST /v1/chat/completions``: an image for the last user message, streamed or not."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado.iostream import StreamClosedError

from tornado_imagegate import housekeeping, openai_api
from tornado_imagegate.errors import GatewayError, from_status
from tornado_imagegate.generation import ImageService, PendingInputs
from tornado_imagegate.handlers.base import JsonApiHandler
from tornado_imagegate.handlers.generation import GenerationHandler
from tornado_imagegate.images import inputs
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.openai_api import SSE_KEEPALIVE, ChatBody, ImageRequest, sse_event

logger = logging.getLogger(__name__)


class ChatCompletionsHandler(GenerationHandler):
    """Answers a chat completion whose content is a markdown image of the gateway's own link."""

    takes_images = True  # image_url parts as data URIs

    def initialize(self, service: ImageService, metrics: Metrics) -> None:
        """Take the generation service and the metrics (open streams) from the route table."""
        super().initialize(service)
        self.metrics = metrics

    async def post(self) -> None:
        """Validate, then answer a task with text or generate; as JSON or as a stream."""
        chat = self.service.read_chat(self.json_body())
        # Before the prompt is validated: a task prompt may hold a whole chat history.
        if self.config.answer_task_requests and housekeeping.is_task_request(chat):
            await self.answer_text(chat, housekeeping.task_reply(chat))
            return
        request = self.service.chat_request(chat)
        # Checked now; links are loaded inside the generation, which the client's leaving stops.
        pending = self.service.input_plan(
            request, chat.last_user_images(), inputs.previous_link(chat)
        )
        if request.stream:
            await self.stream(request, chat, pending)
            return
        generation = await self.generated(request, pending)
        if generation is None:
            return
        self.write_json(
            openai_api.chat_completion(request.model, generation.markdown(), request.prompt)
        )

    async def answer_text(self, chat: ChatBody, text: str) -> None:
        """A short text answer (to a client's housekeeping task): no image, no upstream call."""
        asked = housekeeping.task_text(chat)
        if chat.fields.get("stream") is not True:
            self.write_json(openai_api.chat_completion(chat.model, text, asked))
            return
        stream = _Stream(self, chat.model, openai_api.include_usage(chat.fields))
        await stream.start()
        await stream.content(text, asked)
        self.finish()

    async def stream(self, request: ImageRequest, chat: ChatBody, pending: PendingInputs) -> None:
        """Server-Sent Events: the role chunk at once, keep-alives while working, then content."""
        stream = _Stream(self, request.model, openai_api.include_usage(chat.fields))
        streams_open = self.metrics.streams_open
        streams_open.inc()
        try:
            await self.stream_generation(stream, request, pending)
        finally:
            streams_open.dec()

    async def stream_generation(
        self, stream: _Stream, request: ImageRequest, pending: PendingInputs | None = None
    ) -> None:
        """The body of a generating stream, from the role chunk to ``[DONE]``."""
        await stream.start()
        thinking: list[str] = []
        wake = asyncio.Event()

        def on_thinking(text: str) -> None:
            """Queue the optimiser's thinking and the task's progress for the stream (if shown)."""
            if self.config.stream_reasoning:
                thinking.append(text)
                wake.set()

        work = self.start_generation(request, on_thinking, pending)
        try:
            while not work.done():
                waker = asyncio.ensure_future(wake.wait())
                await asyncio.wait(
                    {work, waker},
                    timeout=self.config.sse_keepalive_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waker.cancel()
                wake.clear()
                if thinking:
                    while thinking:
                        await stream.reasoning(thinking.pop(0))
                elif not work.done():
                    await stream.keepalive()
            generation = work.result()
        except (StreamClosedError, asyncio.CancelledError):
            self.on_connection_close()
            return
        except GatewayError as exc:
            await stream.error(exc)
            return
        except Exception:
            logger.exception("generation failed in a stream")
            await stream.error(from_status(500))
            return
        await stream.content(generation.markdown(), request.prompt)
        self.finish()


class _Stream:
    """The writing side of one chat completion stream; every chunk shares ``id`` and ``created``."""

    def __init__(self, handler: JsonApiHandler, model: str, with_usage: bool) -> None:
        self.handler = handler
        self.model = model
        self.with_usage = with_usage
        self.id = openai_api.completion_id()
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """One encoded ``chat.completion.chunk`` event."""
        return sse_event(
            openai_api.chat_chunk(self.id, self.created, self.model, delta, finish_reason)
        )

    async def send(self, data: bytes) -> None:
        """Write and flush, so the client gets it now (and backpressure applies)."""
        self.handler.write(data)
        await self.handler.flush()

    async def start(self) -> None:
        """Headers and the role chunk, before any upstream call."""
        handler = self.handler
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        await self.send(self.chunk({"role": "assistant", "content": ""}))

    async def keepalive(self) -> None:
        """A comment line: keeps proxies from closing a quiet stream; clients ignore it."""
        await self.send(SSE_KEEPALIVE)

    async def reasoning(self, text: str) -> None:
        """The optimiser's thinking, which clients show as such."""
        await self.send(self.chunk({"reasoning_content": text}))

    async def content(self, text: str, prompt: str) -> None:
        """The answer, the final chunk, the usage if asked for, and ``[DONE]``."""
        data = self.chunk({"content": text}) + self.chunk({}, "stop")
        if self.with_usage:
            data += sse_event(
                openai_api.usage_chunk(
                    self.id, self.created, self.model, openai_api.usage(prompt, text)
                )
            )
        await self.send(data + sse_event("[DONE]"))

    async def error(self, error: GatewayError) -> None:
        """A failure after the stream began: an error event, then ``[DONE]``."""
        try:
            await self.send(sse_event(error.envelope()) + sse_event("[DONE]"))
        except StreamClosedError:
            return
        self.handler.finish()
