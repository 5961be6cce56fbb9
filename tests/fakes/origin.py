"""Image hosts: ``FakeOrigin``, whose routes a test scripts and counts, and the bare handler a
benchmark compares the gateway with."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from .loopback import DEFAULT_BACKLOG, listen

Behaviour = Callable[[RequestHandler], Awaitable[None] | None]


@dataclass
class Held:
    """A route the test holds: ``asked`` is set when a request arrives, ``release`` lets it end,
    ``left`` is set when the client hangs up before it ended."""

    asked: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    left: asyncio.Event = field(default_factory=asyncio.Event)


class _Route(RequestHandler):
    """Runs the behaviour registered for the path, counting requests."""

    def initialize(self, origin: FakeOrigin) -> None:
        self.origin = origin

    async def get(self, path: str) -> None:
        self.path = path
        self.origin.hits[path] += 1
        behaviour = self.origin.routes.get(path)
        if behaviour is None:
            self.set_status(404)
            self.finish("no such fake route")
            return
        result = behaviour(self)
        if asyncio.iscoroutine(result):
            await result

    head = get

    def on_connection_close(self) -> None:
        held = self.origin.held.get(getattr(self, "path", ""))
        if held is not None:
            held.left.set()


class FakeOrigin:
    """An HTTP server on a loopback address whose routes the test sets; counts every request."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, backlog: int = DEFAULT_BACKLOG
    ) -> None:
        self.host = host
        self.routes: dict[str, Behaviour] = {}
        self.held: dict[str, Held] = {}
        self.hits: Counter[str] = Counter()
        self.connections = 0
        app = Application([(r"/(.*)", _Route, {"origin": self})])
        origin = self

        class _CountingServer(HTTPServer):
            def handle_stream(self, stream: Any, address: Any) -> None:
                origin.connections += 1
                super().handle_stream(stream, address)

        self.server = _CountingServer(app)
        self.port = listen(self.server, host, port, backlog)

    def url(self, path: str) -> str:
        """The absolute URL of a path on this origin."""
        return f"http://{self.host}:{self.port}/{path}"

    def serve(self, path: str, body: bytes, content_type: str = "image/png", **headers: str):
        """Answer ``path`` with these bytes."""

        def behaviour(handler: RequestHandler) -> None:
            handler.set_header("Content-Type", content_type)
            for name, value in headers.items():
                handler.set_header(name.replace("_", "-"), value)
            handler.finish(body)

        self.routes[path] = behaviour

    def serve_once(self, path: str, body: bytes, content_type: str = "image/png") -> None:
        """Answer ``path`` with these bytes once, then 403, as a signed link that has expired."""

        def behaviour(handler: RequestHandler) -> None:
            handler.set_header("Content-Type", content_type)
            handler.finish(body)
            self.status(path, 403, b"<Error><Code>AccessDenied</Code>Request has expired</Error>")

        self.routes[path] = behaviour

    def status(self, path: str, code: int, body: bytes = b"gone") -> None:
        """Answer ``path`` with an error status."""

        def behaviour(handler: RequestHandler) -> None:
            handler.set_status(code)
            handler.finish(body)

        self.routes[path] = behaviour

    def redirect(self, path: str, location: str, code: int = 302) -> None:
        """Answer ``path`` with a redirect."""

        def behaviour(handler: RequestHandler) -> None:
            handler.redirect(location, status=code)

        self.routes[path] = behaviour

    def hold(
        self,
        path: str,
        body: bytes,
        *,
        first: int = 0,
        content_type: str = "image/png",
        declare_length: bool = False,
        release: asyncio.Event | None = None,
    ) -> Held:
        """Answer ``path`` with ``body`` only once the test releases it.

        The first ``first`` bytes (and so the headers) are sent at once, the rest after the
        release; ``declare_length`` sends a Content-Length (else the body is chunked). Several
        routes may share one ``release``.
        """
        held = Held(release=release or asyncio.Event())

        async def behaviour(handler: RequestHandler) -> None:
            held.asked.set()
            handler.set_header("Content-Type", content_type)
            if declare_length:
                handler.set_header("Content-Length", str(len(body)))
            if first:
                handler.write(body[:first])
                await handler.flush()
            await held.release.wait()
            handler.finish(body[first:])

        self.routes[path] = behaviour
        self.held[path] = held
        return held

    def close(self) -> None:
        """Stop listening."""
        self.server.stop()


class BareImageHandler(RequestHandler):
    """The floor a benchmark measures the gateway against: the bytes from memory, nothing else."""

    def initialize(self, data: bytes) -> None:
        """Take the image bytes from the route table."""
        self.data = data

    def compute_etag(self) -> None:
        """No per-request SHA-1 of the body (the gateway does not hash per request either)."""
        return None

    def get(self) -> None:
        """Send the image."""
        self.set_header("Content-Type", "image/png")
        self.finish(self.data)


def bare_image_app(path: str, data: bytes) -> Application:
    """An application serving ``data`` at ``path`` with ``BareImageHandler``."""
    return Application([(path, BareImageHandler, {"data": data})])
