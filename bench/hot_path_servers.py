"""The lean fakes and bare Tornado servers of bench_hot_path.py, each run as a child process.

They are kept lean on purpose: their CPU time per request is the reference a figure of the
gateway is divided by, so they do nothing a real provider or a bare handler would not need.

* ``serve_fakes``: one Tornado process on 127.0.0.1 with an SD/SiliconFlow-shaped provider
  answering URL images (``/v1/images/generations``), its slow twin (``/slow/...``, after a
  delay), an OpenAI-Images-shaped provider answering ``b64_json`` (``/b64/...``) and the image
  host of the URL provider (``/img/<n>.png``). Every image is unique: its number is written in a
  ``tEXt`` chunk before ``IEND``.
* ``serve_bare``: a bare image handler (``Content-Type`` and a precomputed ``ETag``, the bytes
  from memory) and a bare SSE handler (the chunks a streamed chat completion sends), on the event
  loop the gateway runs on.
* ``serve_floor``: the design floor, the least a gateway built as this one is (Tornado handlers,
  one ``AsyncHTTPClient`` with the gateway's curl client class) can do for a non-streamed chat
  completion and for an Images API request answered in base64, on the fakes and on the event
  loop the gateway runs on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import struct
import time
import zlib
from dataclasses import dataclass

import orjson
import pybase64
from fakes import emit, noise_png_of_size, serve_until_stdin_closes
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from tornado_imagegate.config import Settings
from tornado_imagegate.openai_api import chat_completion
from tornado_imagegate.providers import json_request
from tornado_imagegate.providers.siliconflow import INFERENCE_STEPS
from tornado_imagegate.server import configure_http_client

HOST = "127.0.0.1"
BACKLOG = 4096  # a burst of 1000 connections must never find a full accept queue here
IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def unique_png(base: bytes, number: int) -> bytes:
    """``base`` with ``number`` in a ``tEXt`` chunk before its ``IEND``: a distinct valid PNG."""
    payload = b"Comment\0" + str(number).encode()
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    return base[: -len(IEND)] + chunk + IEND


class UniqueB64:
    """Base64 of distinct PNGs, cheaply: the unchanging head is encoded once."""

    def __init__(self, base: bytes) -> None:
        head = base[: -len(IEND)]
        self.split = len(head) - len(head) % 3  # a base64 block boundary
        self.head = base64.b64encode(base[: self.split]).decode("ascii")
        self.base = base

    def encode(self, number: int) -> str:
        """Base64 of ``unique_png(base, number)``."""
        tail = unique_png(self.base, number)[self.split :]
        return self.head + base64.b64encode(tail).decode("ascii")


class _Lean(RequestHandler):
    """Common ground: no ETag hashing of answers, JSON written as bytes."""

    def initialize(self, state: FakeState) -> None:
        self.state = state

    def compute_etag(self) -> None:
        """No per-request SHA-1 of the answer."""
        return None

    def answer_json(self, data: object) -> None:
        """Finish with ``data`` as JSON."""
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data).encode())


class UrlProvider(_Lean):
    """SiliconFlow-shaped: ``{"images": [{"url"}], "timings", "seed"}``, a new image each time."""

    async def post(self, slow: str | None = None) -> None:
        """Answer one generation (after the configured delay on ``/slow``)."""
        if slow:
            await asyncio.sleep(self.state.slow_delay)
        number = next(self.state.numbers)
        url = f"{self.state.origin}/img/{number}.png"
        seed = random.randrange(2**31)
        self.answer_json({"images": [{"url": url}], "timings": {"inference": 0.1}, "seed": seed})


class B64Provider(_Lean):
    """OpenAI-Images-shaped: ``{"created", "data": [{"b64_json", "revised_prompt"}]}``."""

    def post(self) -> None:
        """Answer one generation with a distinct PNG in base64."""
        number = next(self.state.numbers)
        data = [{"b64_json": self.state.b64.encode(number), "revised_prompt": "a cat"}]
        self.answer_json({"created": int(time.time()), "data": data})


class ImageHost(_Lean):
    """The URL provider's images: ``/img/<n>.png``, distinct bytes for each ``n``."""

    def get(self, number: str) -> None:
        """Send image ``number``."""
        self.set_header("Content-Type", "image/png")
        self.finish(unique_png(self.state.url_png, int(number)))


class FakeState:
    """What the fakes share: image numbers, base images, the slow provider's delay."""

    def __init__(self, url_image_bytes: int, b64_image_bytes: int, slow_delay: float) -> None:
        rng = random.Random(15)
        self.numbers = itertools.count(1)
        self.url_png = noise_png_of_size(url_image_bytes, rng)
        self.b64 = UniqueB64(noise_png_of_size(b64_image_bytes, rng))
        self.slow_delay = slow_delay
        self.origin = ""


async def serve_fakes(url_image_bytes: int, b64_image_bytes: int, slow_delay: float) -> None:
    """Run the fakes until stdin closes; announce ``{"url": origin}`` first."""
    state = FakeState(url_image_bytes, b64_image_bytes, slow_delay)
    app = Application(
        [
            (r"/(slow/)?v1/images/generations", UrlProvider, {"state": state}),
            (r"/b64/v1/images/generations", B64Provider, {"state": state}),
            (r"/img/(\d+)\.png", ImageHost, {"state": state}),
        ]
    )
    server, state.origin = listen(app)
    await serve_announced(server, state.origin)


def listen(app: Application) -> tuple[HTTPServer, str]:
    """Serve ``app`` on 127.0.0.1 and a free port, with a deep accept queue; the origin."""
    server = HTTPServer(app)
    sockets = bind_sockets(0, HOST, backlog=BACKLOG)
    server.add_sockets(sockets)
    return server, f"http://{HOST}:{sockets[0].getsockname()[1]}"


async def serve_announced(server: HTTPServer, origin: str) -> None:
    """Announce ``{"url": origin}``, then serve until stdin closes."""
    emit({"url": origin})
    await serve_until_stdin_closes({}, stop_on_signals=True)
    server.stop()


class BareImage(RequestHandler):
    """The floor of a cache hit: the bytes from memory with a precomputed ETag."""

    def initialize(self, data: bytes, etag: str) -> None:
        self.data = data
        self.etag = etag

    def compute_etag(self) -> None:
        """The ETag is set from the precomputed value, not hashed per request."""
        return None

    def get(self) -> None:
        """Send the image."""
        self.set_header("Content-Type", "image/png")
        self.set_header("ETag", self.etag)
        self.finish(self.data)


def sse_chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    """One ``chat.completion.chunk`` event."""
    chunk = {
        "id": "chatcmpl-bare",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "flux-fast",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class BareSse(RequestHandler):
    """The floor of a streamed chat completion: role chunk at once, then content and [DONE]."""

    def compute_etag(self) -> None:
        """A stream has no ETag."""
        return None

    async def post(self) -> None:
        """Stream the chunks a chat completion streams."""
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(sse_chunk({"role": "assistant"}))
        await self.flush()
        self.write(sse_chunk({"content": "![image](http://127.0.0.1/image.png)"}))
        self.write(sse_chunk({}, "stop"))
        self.finish(b"data: [DONE]\n\n")


async def serve_bare(image: bytes) -> None:
    """Run the bare servers until stdin closes; announce ``{"url": origin}`` first."""
    etag = '"' + hashlib.sha256(image).hexdigest()[:32] + '"'
    app = Application(
        [
            (r"/image-proxy", BareImage, {"data": image, "etag": etag}),
            (r"/v1/chat/completions", BareSse),
        ]
    )
    await serve_announced(*listen(app))


# --- the design floor ---------------------------------------------------------------------

FLOOR_SIZE = "1024x1024"  # the size the gateway asks for when the client names none


@dataclass(frozen=True)
class Route:
    """Where the floor sends a model's generations: the provider's endpoint and key."""

    endpoint: str
    key: str


class _Floor(RequestHandler):
    """Common ground of the floor's handlers: the routes and one upstream client."""

    def initialize(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    def route(self, model: str) -> Route:
        """The provider of ``model`` (a 404 for a model the floor does not know)."""
        try:
            return self.routes[model]
        except KeyError:
            raise HTTPError(404, "no route for model %r", model) from None

    async def generate(self, route: Route, body: dict[str, object]) -> dict:
        """POST ``body`` to the provider (as the gateway's providers do) and read its JSON."""
        request = json_request(route.endpoint, route.key, body)
        response = await AsyncHTTPClient().fetch(request)
        return orjson.loads(response.body)

    def answer_json(self, data: object) -> None:
        """Finish with ``data`` as JSON."""
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(data))


class FloorChat(_Floor):
    """A non-streamed chat completion from a URL-answering provider, and nothing more."""

    async def post(self) -> None:
        """Generate, fetch the image, name it by one SHA-256, answer a markdown image link."""
        request = orjson.loads(self.request.body)
        model = request["model"]
        prompt = request["messages"][-1]["content"]
        body = {
            "model": model,
            "prompt": prompt,
            "image_size": FLOOR_SIZE,
            "num_inference_steps": INFERENCE_STEPS,
            "seed": random.randrange(2**31),
        }
        answer = await self.generate(self.route(model), body)
        image = await AsyncHTTPClient().fetch(answer["images"][0]["url"])
        name = hashlib.sha256(image.body).hexdigest()
        host = self.request.host
        content = f"![image](http://{host}/image-proxy?id={name})"
        self.answer_json(chat_completion(model, content, prompt))


class FloorImages(_Floor):
    """An Images API request answered in base64: the provider's string passes through."""

    async def post(self) -> None:
        """Generate, decode the image once and hash it, answer the provider's base64 as it is."""
        request = orjson.loads(self.request.body)
        model = request["model"]
        body = {
            "model": model,
            "prompt": request["prompt"],
            "n": 1,
            "size": FLOOR_SIZE,
            "response_format": "b64_json",
        }
        answer = await self.generate(self.route(model), body)
        encoded = answer["data"][0]["b64_json"]
        # A gateway must sniff the image and name the copy it keeps: one decode, one hash.
        hashlib.sha256(pybase64.b64decode(encoded, validate=True))
        self.answer_json({"created": int(time.time()), "data": [{"b64_json": encoded}]})


async def serve_floor(routes: dict[str, Route]) -> None:
    """Run the floor until stdin closes; announce ``{"url": origin}`` first."""
    configure_http_client(Settings())  # the gateway's client class, limits and body cap
    app = Application(
        [
            (r"/v1/chat/completions", FloorChat, {"routes": routes}),
            (r"/v1/images/generations", FloorImages, {"routes": routes}),
        ]
    )
    await serve_announced(*listen(app))
