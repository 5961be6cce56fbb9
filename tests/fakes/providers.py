"""Fake upstream services: loopback Tornado servers speaking the real request and response
shapes of the services the gateway calls, recording every request, scriptable.

Create them in fixtures that depend on ``io_loop`` and close them in the fixture's teardown::

    @pytest.fixture
    def image_host(io_loop):
        host = FakeOrigin()
        yield host
        host.close()

    @pytest.fixture
    def siliconflow(io_loop, image_host):
        fake = FakeSiliconFlow(image_host)
        yield fake
        fake.close()

A bench runs them in a process of its own (see ``fakes.child``), with a larger ``backlog``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPFile, parse_body_arguments
from tornado.ioloop import IOLoop
from tornado.web import Application, RequestHandler

from .images import b64_png, jpeg_bytes, png_bytes, webp_bytes
from .loopback import DEFAULT_BACKLOG, listen
from .origin import FakeOrigin

# Numbers for the images the fakes put on image hosts: unique across every fake of the run.
_image_numbers = itertools.count(1)


@dataclass
class Recorded:
    """One request a fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    key: str | None
    query: str = ""
    received_at: float = 0.0  # time.time() when it arrived
    answered_at: float | None = None  # time.time() when the answer was sent
    # A multipart form's files: field name -> [(file name, content type, bytes)], in order.
    files: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)


@dataclass
class Answer:
    """How a fake answers one request."""

    status: int = 200
    json: Any = None  # a JSON value, or a callable(Recorded) -> JSON value
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    per_key: dict[str, Answer] | None = None


def bearer_key(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def model_of(request: Recorded, fallback: str = "fake-model") -> str:
    """The ``model`` of a recorded JSON request, or ``fallback``."""
    if isinstance(request.json, dict) and isinstance(request.json.get("model"), str):
        return request.json["model"]
    return fallback


def chat_completion(
    content: str | None, model: str, finish_reason: str = "stop", **message_extra: Any
) -> dict[str, Any]:
    """A standard non-streaming OpenAI ``chat.completion`` object with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    message.update(message_extra)
    completion_tokens = max(1, len((content or "").split()))
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": completion_tokens,
            "total_tokens": 12 + completion_tokens,
        },
    }


def openai_error(
    status: int, message: str, code: str | None = None, type_: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope ``{"error": {message, type, param, code}}``."""
    if type_ is None:
        type_ = "server_error" if status >= 500 else "requests" if status == 429 else None
        type_ = type_ or "invalid_request_error"
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class _Handler(RequestHandler):
    """Hands every request, whatever its method, to the fake."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake

    async def _serve(self, *args: Any) -> None:
        await self.fake._serve(self)

    get = head = post = delete = patch = put = options = _serve

    def on_connection_close(self) -> None:
        self.fake.client_left.set()


class FakeUpstream:
    """A scriptable fake HTTP service on a loopback port that records every request."""

    #: Prefix of the paths this fake puts on its image host.
    image_prefix = "img"
    #: Whether a request without a bearer key is answered 401, as a real service does.
    require_key = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        image_host: FakeOrigin | None = None,
        *,
        port: int = 0,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        self.host = host
        self.image_host = image_host
        self.requests: list[Recorded] = []
        self.queue: deque[Answer] = deque()
        self.default = Answer(json={})
        self.image_urls: list[str] = []
        self.errors: list[BaseException] = []
        self.make_png: Callable[[int], bytes] = lambda n: png_bytes(seed=n)
        self.io_loop = IOLoop.current()
        self._closed = asyncio.Event()
        # Open: requests are answered as they come. A test that clears it holds every answer
        # (chosen only when it opens again) until it sets it.
        self.gate = asyncio.Event()
        self.gate.set()
        # Set when a client hangs up on a request still being answered.
        self.client_left = asyncio.Event()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._waiters: list[asyncio.Future[None]] = []
        self.server = HTTPServer(Application([(r"/.*", _Handler, {"fake": self})]))
        self.port: int = listen(self.server, host, port, backlog)

    # --- the test's side -------------------------------------------------------------------

    def url(self, path: str = "") -> str:
        """The absolute URL of a path on this fake."""
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    def script(self, *answers: Answer) -> None:
        """Queue answers for the next requests, in order (then ``default`` answers)."""
        self.queue.extend(answers)

    def keys_used(self) -> list[str | None]:
        """The bearer key of each request, in order."""
        return [request.key for request in self.requests]

    def last(self) -> Recorded:
        """The last request received."""
        assert self.requests, "the fake received no request"
        return self.requests[-1]

    async def wait_requests(self, count: int = 1, within: float = 5.0) -> list[Recorded]:
        """Wait (at most ``within`` seconds) until ``count`` requests have arrived; return them."""
        async with asyncio.timeout(within):
            while len(self.requests) < count:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        return self.requests[:count]

    def new_image_url(self, prefix: str | None = None) -> str:
        """Put a fresh PNG on the image host and return its URL."""
        assert self.image_host is not None, "this fake has no image_host"
        number = next(_image_numbers)
        path = f"{prefix or self.image_prefix}/{number}.png"
        self.image_host.serve(path, self.make_png(number))
        url = self.image_host.url(path)
        self.image_urls.append(url)
        return url

    def close(self) -> None:
        """Release hanging requests and stop the server (and, outside a running loop, drain it)."""
        self._closed.set()
        self.server.stop()
        loop = self.io_loop.asyncio_loop  # type: ignore[attr-defined]
        if not loop.is_closed() and not loop.is_running():
            self.io_loop.run_sync(self._drain, timeout=10)

    async def aclose(self) -> None:
        """Close from inside a running test: stop, release hanging requests, drop connections."""
        self._closed.set()
        self.server.stop()
        await self._drain()

    # --- the service's side ----------------------------------------------------------------

    def accepts(self, path: str) -> bool:
        """Whether the service has an endpoint at ``path`` (others answer 404)."""
        return True

    def error_json(self, status: int, message: str) -> Any:
        """The service's error body, for the fake's own 400, 404 and 405 answers."""
        return openai_error(status, message)

    async def _drain(self) -> None:
        await self.server.close_all_connections()
        await self._idle.wait()

    def _record(self, handler: RequestHandler) -> tuple[Recorded, bool]:
        request = handler.request
        headers = {name.lower(): value for name, value in request.headers.get_all()}
        body = request.body or b""
        parsed, valid = None, False
        try:
            parsed = json.loads(body)
            valid = isinstance(parsed, dict)
        except (ValueError, UnicodeDecodeError):
            pass
        recorded = Recorded(
            method=request.method or "",
            path=request.path,
            headers=headers,
            body=body,
            json=parsed,
            key=bearer_key(headers.get("authorization")),
            query=request.query,
            received_at=time.time(),
        )
        return recorded, valid

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        if recorded.method != "POST":
            return Answer(
                405,
                self.error_json(405, f"method {recorded.method} not allowed"),
                headers={"Allow": "POST"},
            )
        if not self.accepts(recorded.path):
            return Answer(404, self.error_json(404, f"no endpoint at {recorded.path}"))
        if self.require_key and recorded.key is None:
            return Answer(401, self.error_json(401, "no bearer key"))
        if not valid:
            return Answer(400, self.error_json(400, "the request body is not a JSON object"))
        answer = self.queue.popleft() if self.queue else self.default
        if answer.per_key and recorded.key in answer.per_key:
            answer = answer.per_key[recorded.key]  # type: ignore[index]
        return answer

    async def _wait(self, seconds: float | None) -> bool:
        """Sleep (None: forever) unless the fake closes first; True when it closed."""
        if self._closed.is_set():
            return True
        try:
            await asyncio.wait_for(self._closed.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _through_gate(self) -> bool:
        """Wait until the test opens the gate, unless the fake closes first; True when it closed."""
        if self.gate.is_set():
            return False
        opened = asyncio.ensure_future(self.gate.wait())
        closing = asyncio.ensure_future(self._closed.wait())
        done, pending = await asyncio.wait({opened, closing}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return closing in done

    async def _serve(self, handler: RequestHandler) -> None:
        recorded, valid = self._record(handler)
        self.requests.append(recorded)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        self._inflight += 1
        self._idle.clear()
        try:
            closed = await self._through_gate()
            answer = self._choose(recorded, valid)
            if answer.delay > 0 and not closed:
                closed = await self._wait(answer.delay)
            if answer.hang and not closed:
                closed = await self._wait(None)
            if closed:
                # The fake went away without answering: drop the connection.
                handler.request.connection.close()  # type: ignore[union-attr]
                return
            self._write(handler, recorded, answer)
            recorded.answered_at = time.time()
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _write(self, handler: RequestHandler, recorded: Recorded, answer: Answer) -> None:
        status, content_type = answer.status, answer.content_type
        try:
            if answer.body is not None:
                body = answer.body
                content_type = content_type or "application/octet-stream"
            elif answer.json is not None:
                data = answer.json(recorded) if callable(answer.json) else answer.json
                body = json.dumps(data).encode()
                content_type = content_type or "application/json"
            else:
                body = b""
        except Exception as exc:
            # Never let Tornado log the request (its headers hold keys): answer 500 and keep it.
            self.errors.append(exc)
            status, content_type = 500, "application/json"
            body = json.dumps(self.error_json(500, f"fake failed: {exc!r}")).encode()
        handler.set_status(status)
        if content_type:
            handler.set_header("Content-Type", content_type)
        else:
            handler.clear_header("Content-Type")
        for name, value in answer.headers.items():
            handler.set_header(name, value)
        handler.finish(body)


class FakeSiliconFlow(FakeUpstream):
    """SiliconFlow ``/v1/images/generations`` (POST to any path): ``{"images": [{"url"}]}``."""

    image_prefix = "sf"

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(host, image_host, **listening)
        self.default = Answer(json=self._success)

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        # As SiliconFlow's API reference has it: batch_size and guidance_scale are Kolors'
        # alone, cfg the Qwen-Image models' alone, and the edit models take no image_size.
        body = recorded.json if valid and isinstance(recorded.json, dict) else {}
        model = str(body.get("model", "")).lower()
        qwen = "qwen-image" in model
        refused = [name for name in ("batch_size", "guidance_scale") if qwen and name in body]
        refused += ["cfg"] if not qwen and "cfg" in body else []
        refused += ["image_size"] if "qwen-image-edit" in model and "image_size" in body else []
        if refused:
            message = f"{', '.join(refused)} is not supported by model {body.get('model')}"
            return self.error_answer(400, message)
        return super()._choose(recorded, valid)

    def _success(self, request: Recorded) -> dict[str, Any]:
        body = request.json
        seed = body.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = random.randrange(0, 9_999_999_999)
        count = body.get("batch_size") or 1
        count = count if isinstance(count, int) and count > 0 else 1
        return {
            "images": [{"url": self.new_image_url()} for _ in range(count)],
            "timings": {"inference": 1.23},
            "seed": seed,
        }

    def error_json(self, status: int, message: str) -> Any:
        """SiliconFlow's error body."""
        return {"code": 20015, "message": message, "data": None}

    @staticmethod
    def error_answer(status: int, message: str, code: int = 20015) -> Answer:
        """A SiliconFlow error: ``{"code", "message", "data": null}`` with this status."""
        return Answer(status, {"code": code, "message": message, "data": None})

    @staticmethod
    def images_answer(*urls: str, seed: int = 42) -> Answer:
        """A SiliconFlow success holding exactly these image URLs."""
        images = [{"url": url} for url in urls]
        return Answer(json={"images": images, "timings": {"inference": 1.23}, "seed": seed})

    @staticmethod
    def data_urls_answer(*urls: str) -> Answer:
        """The OpenAI shape some compatible services use: ``{"created", "data": [{"url"}]}``."""
        return Answer(json={"created": int(time.time()), "data": [{"url": u} for u in urls]})

    @staticmethod
    def b64_answer(*pngs: bytes) -> Answer:
        """``{"created", "data": [{"b64_json"}]}`` of these PNGs (one fresh PNG when none)."""
        data = [{"b64_json": b64_png(png)} for png in (pngs or (png_bytes(),))]
        return Answer(json={"created": int(time.time()), "data": data})


class FakeChatImages(FakeUpstream):
    """An OpenAI chat-completions endpoint that makes images (markdown image in the content)."""

    image_prefix = "chat"

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(host, image_host, **listening)
        self.default = Answer(json=self._success)

    def _success(self, request: Recorded) -> dict[str, Any]:
        return chat_completion(f"![image]({self.new_image_url()})", model_of(request))

    @staticmethod
    def content_answer(content: str) -> Answer:
        """A chat.completion whose message content is this string (the request's model echoed)."""
        return Answer(json=lambda request: chat_completion(content, model_of(request)))

    @staticmethod
    def raw_image_answer(png: bytes | None = None) -> Answer:
        """An answer that is the PNG bytes themselves (``Content-Type: image/png``)."""
        return Answer(body=png if png is not None else png_bytes(), content_type="image/png")

    @staticmethod
    def data_answer(urls: Iterable[str] = (), pngs: Iterable[bytes] = ()) -> Answer:
        """The OpenAI images shape ``{"created", "data": [{"url"} | {"b64_json"}]}``.

        With neither urls nor pngs: one fresh PNG as ``b64_json``.
        """
        data: list[dict[str, str]] = [{"url": url} for url in urls]
        data += [{"b64_json": b64_png(png)} for png in pngs]
        data = data or [{"b64_json": b64_png()}]
        return Answer(json={"created": int(time.time()), "data": data})

    @staticmethod
    def message_images_answer(*urls: str) -> Answer:
        """OpenRouter/Gemini style: empty content, ``message.images`` of ``image_url`` parts."""
        images = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        return Answer(json=lambda request: chat_completion("", model_of(request), images=images))

    @staticmethod
    def error_answer(status: int, message: str, code: str | None = None) -> Answer:
        """An OpenAI error envelope with this status."""
        return Answer(status, openai_error(status, message, code))


def is_gpt_image(model: Any) -> bool:
    """Whether ``model`` is one of OpenAI's GPT image models (``chatgpt-image-latest`` too)."""
    return str(model).startswith(("gpt-image", "chatgpt-image"))


def openai_size_refused(model: str, size: Any) -> bool:
    """Whether OpenAI refuses ``size`` for ``model`` (a model not OpenAI's takes any size).

    gpt-image-2 takes any WxH with both sides multiples of 16, 1:3 to 3:1, at most 3840x2160.
    """
    sizes = OPENAI_SIZES.get("gpt-image" if is_gpt_image(model) else model)
    if sizes is None or size is None:
        return False
    if str(model).startswith("gpt-image-2") and isinstance(size, str):
        width, _, height = size.partition("x")
        if width.isdigit() and height.isdigit():
            w, h = int(width), int(height)
            long, short = max(w, h), min(w, h)
            return bool(w % 16 or h % 16 or not short or long > 3 * short or long > 3840)
    return size not in sizes


# The sizes OpenAI documents for its own models (openai-python's image_generate_params).
OPENAI_SIZES: dict[str, frozenset[str]] = {
    "gpt-image": frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"}),
    "dall-e-2": frozenset({"256x256", "512x512", "1024x1024"}),
    "dall-e-3": frozenset({"1024x1024", "1792x1024", "1024x1792"}),
}


class FakeOpenAIImages(FakeUpstream):
    """The OpenAI Images API (``/v1/images/generations``, POST to any path).

    GPT image models (``gpt-image*``, ``chatgpt-image-latest``) behave as OpenAI's:
    ``response_format`` is refused (400), images come as ``b64_json`` in ``output_format`` (png,
    jpeg or webp), and the answer echoes ``quality``, ``background``, ``output_format`` and
    ``size`` and carries token ``usage``. OpenAI's models are held to the sizes OpenAI lists, and
    its edits endpoint to what OpenAI takes there: no ``dall-e-3``, one image for ``dall-e-2``.
    """

    image_prefix = "oai"
    #: The ``usage`` a gpt-image answer reports (OpenAI's shape).
    GPT_IMAGE_USAGE: ClassVar[dict[str, Any]] = {
        "input_tokens": 50,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
        "output_tokens": 4160,
        "output_tokens_details": {"text_tokens": 0, "image_tokens": 4160},
        "total_tokens": 4210,
    }
    IMAGE_BYTES: ClassVar[dict[str, Callable[[int], bytes]]] = {
        "jpeg": jpeg_bytes,
        "webp": webp_bytes,
    }

    def __init__(
        self, image_host: FakeOrigin | None = None, host: str = "127.0.0.1", **listening: int
    ) -> None:
        super().__init__(host, image_host, **listening)
        self.default = Answer(json=self._success)

    def _record(self, handler: RequestHandler) -> tuple[Recorded, bool]:
        """A JSON body as any fake's; an edit's multipart form as its fields (``json``, ``n``
        a number as OpenAI reads it) and its files (``files``)."""
        recorded, valid = super()._record(handler)
        content_type = recorded.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            arguments: dict[str, list[bytes]] = {}
            files: dict[str, list[HTTPFile]] = {}
            parse_body_arguments(content_type, recorded.body, arguments, files)
            form: dict[str, Any] = {k: v[0].decode() for k, v in arguments.items()}
            if str(form.get("n", "")).isdigit():
                form["n"] = int(form["n"])
            recorded.json, valid = form, True
            recorded.files = {
                name: [(f.filename, f.content_type, f.body) for f in parts]
                for name, parts in files.items()
            }
        return recorded, valid

    def _choose(self, recorded: Recorded, valid: bool) -> Answer:
        body = recorded.json if valid else {}
        model = str(body.get("model", ""))
        if is_gpt_image(model) and "response_format" in body:
            message = "Unknown parameter: 'response_format'."
            return Answer(400, openai_error(400, message, "unknown_parameter"))
        if openai_size_refused(model, body.get("size")):
            message = f"Invalid value: '{body['size']}'. Supported sizes differ by model."
            return Answer(400, openai_error(400, message, "invalid_value"))
        if recorded.files:
            refused = self._edit_refused(model, recorded)
            if refused is not None:
                return refused
        return super()._choose(recorded, valid)

    @staticmethod
    def _edit_refused(model: str, recorded: Recorded) -> Answer | None:
        """OpenAI's answer to an edit its models cannot make, or None."""
        if model == "dall-e-3":
            message = "Invalid value: 'dall-e-3'. Value must be 'dall-e-2' or a GPT image model."
            return Answer(400, openai_error(400, message, "invalid_value"))
        images = len(recorded.files.get("image", [])) + len(recorded.files.get("image[]", []))
        if model == "dall-e-2" and images > 1:
            message = "dall-e-2 takes one image to edit."
            return Answer(400, openai_error(400, message, "invalid_value"))
        return None

    def _success(self, request: Recorded) -> dict[str, Any]:
        body = request.json
        count = body.get("n") or 1
        count = count if isinstance(count, int) and count > 0 else 1
        prompt = body.get("prompt", "")
        if is_gpt_image(body.get("model", "")):
            return self._gpt_image_success(body, count)
        data: list[dict[str, Any]] = []
        for _ in range(count):
            if body.get("response_format") == "url":
                data.append({"url": self.new_image_url(), "revised_prompt": prompt})
            else:
                png = self.make_png(next(_image_numbers))
                data.append({"b64_json": b64_png(png), "revised_prompt": prompt})
        return {"created": int(time.time()), "data": data}

    def _gpt_image_success(self, body: dict[str, Any], count: int) -> dict[str, Any]:
        output_format = body.get("output_format", "png")
        make = self.IMAGE_BYTES.get(output_format, self.make_png)
        data = [{"b64_json": b64_png(make(next(_image_numbers)))} for _ in range(count)]
        return {
            "created": int(time.time()),
            "background": body.get("background", "opaque"),
            "output_format": output_format,
            "quality": body.get("quality", "high"),
            "size": body.get("size", "1024x1024"),
            "data": data,
            "usage": self.GPT_IMAGE_USAGE,
        }

    @staticmethod
    def url_answer(*urls: str) -> Answer:
        """``{"created", "data": [{"url"}]}`` with these URLs."""
        return Answer(json={"created": int(time.time()), "data": [{"url": u} for u in urls]})

    @staticmethod
    def b64_answer(*pngs: bytes) -> Answer:
        """``{"created", "data": [{"b64_json"}]}`` of these PNGs (one fresh PNG when none)."""
        data = [{"b64_json": b64_png(png)} for png in (pngs or (png_bytes(),))]
        return Answer(json={"created": int(time.time()), "data": data})

    @staticmethod
    def error_answer(status: int, message: str, code: str | None = None) -> Answer:
        """An OpenAI error envelope with this status."""
        return Answer(status, openai_error(status, message, code))


class FakeSD(FakeUpstream):
    """The Z-Image/SD API of sd.exacg.cc: ``{"success": true, "data": {"image_url"}}``."""

    image_prefix = "sd"

    def __init__(self, image_host: FakeOrigin, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(host, image_host, **listening)
        self.default = Answer(json=self._success)

    def _success(self, request: Recorded) -> dict[str, Any]:
        return {"success": True, "data": {"image_url": self.new_image_url()}}

    def error_json(self, status: int, message: str) -> Any:
        """The SD API's failure body."""
        return {"success": False, "error": message}

    @staticmethod
    def image_answer(url: str) -> Answer:
        """A success holding this image URL."""
        return Answer(json={"success": True, "data": {"image_url": url}})

    @staticmethod
    def failure_answer(message: str, status: int = 200, field: str = "error") -> Answer:
        """A failure: ``{"success": false, <field>: message}`` (field "error" or "message")."""
        return Answer(status, {"success": False, field: message})


DEFAULT_OPTIMISED_PROMPT = (
    "a majestic cat on a moonlit tiled roof, cinematic lighting, detailed digital painting"
)


class FakeLLM(FakeUpstream):
    """An OpenAI-compatible chat-completions LLM: POST to any path ending in /chat/completions."""

    def __init__(self, host: str = "127.0.0.1", **listening: int) -> None:
        super().__init__(host, **listening)
        self.reply = DEFAULT_OPTIMISED_PROMPT
        self.default = Answer(json=lambda request: chat_completion(self.reply, model_of(request)))

    def base_url(self) -> str:
        """The base URL to configure the gateway with (it appends ``/chat/completions``)."""
        return self.url("v1")

    def accepts(self, path: str) -> bool:
        """Only paths ending in ``/chat/completions``."""
        return path.rstrip("/").endswith("/chat/completions")

    @staticmethod
    def reply_answer(content: str, reasoning_content: str | None = None) -> Answer:
        """A chat.completion with this content (and a reasoning model's ``reasoning_content``)."""
        extra = {} if reasoning_content is None else {"reasoning_content": reasoning_content}
        return Answer(json=lambda request: chat_completion(content, model_of(request), **extra))

    @classmethod
    def think_answer(cls, thinking: str, prompt: str) -> Answer:
        """A chat.completion whose content is ``<think>thinking</think>\\nprompt``."""
        return cls.reply_answer(f"<think>{thinking}</think>\n{prompt}")

    @staticmethod
    def error_answer(status: int, message: str, code: str | None = None) -> Answer:
        """An OpenAI error envelope with this status."""
        return Answer(status, openai_error(status, message, code))
