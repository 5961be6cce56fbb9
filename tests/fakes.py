"""Fake upstreams for tests: small Tornado servers on loopback ports, speaking real HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_imagegate.demo_render import render_png


def png_bytes(size: int = 64, seed: int = 1) -> bytes:
    """A real, decodable PNG."""
    return render_png("fake origin image", seed, size, size)


def png_of_length(length: int) -> bytes:
    """Bytes of exactly ``length`` that start like a PNG (enough for the gateway's checks)."""
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
    return head + os.urandom(max(0, length - len(head)))


def noise_png(width: int, height: int) -> bytes:
    """A decodable PNG of random pixels (it does not compress: about 3 bytes a pixel)."""
    raw = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 0))
        + chunk(b"IEND", b"")
    )


Behaviour = Callable[[RequestHandler], Awaitable[None] | None]


class _Route(RequestHandler):
    """Runs the behaviour registered for the path, counting requests."""

    def initialize(self, origin: FakeOrigin) -> None:
        self.origin = origin

    async def get(self, path: str) -> None:
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


class FakeOrigin:
    """An HTTP server on a loopback address whose routes the test sets; counts every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Behaviour] = {}
        self.hits: Counter[str] = Counter()
        self.connections = 0
        app = Application([(r"/(.*)", _Route, {"origin": self})])
        origin = self

        class _CountingServer(HTTPServer):
            def handle_stream(self, stream: Any, address: Any) -> None:
                origin.connections += 1
                super().handle_stream(stream, address)

        self.server = _CountingServer(app)
        sockets = bind_sockets(0, host, family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self.server.add_sockets(sockets)

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

    def close(self) -> None:
        """Stop listening."""
        self.server.stop()
