"""A real forwarding proxy for tests (HTTP CONNECT, absolute-URI HTTP, SOCKS5) that records
every request it receives: the line a client sent it and, in a TLS tunnel, the server name."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from typing import Any
from urllib.parse import urlsplit

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.tcpserver import TCPServer

from .loopback import listen

_HOP_HEADERS = ("connection", "proxy-connection", "proxy-authorization", "keep-alive")
_background: set[asyncio.Task] = set()


class RecordingProxy(TCPServer):
    """Listens on ``host``; forwards what it is asked to, and keeps a record of it.

    ``requests`` holds one line per request: ``CONNECT 203.0.113.5:80``, ``GET http://...``
    (an absolute-URI request), ``SOCKS5 CONNECT name:port``. ``connections`` counts every
    connection accepted, whether or not it got as far as a request.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.host = host
        self.requests: list[str] = []
        self.server_names: list[str] = []  # the SNI of each TLS handshake seen in a tunnel
        self.credentials: list[str] = []  # "user:password" of each Proxy-Authorization
        self.connections = 0
        self.port: int = listen(self, host)

    @property
    def netloc(self) -> str:
        """``host:port`` of the proxy."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, scheme: str = "http", userinfo: str = "") -> str:
        """The proxy's URL, as the gateway is configured with it."""
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{self.netloc}"

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        """Serve one client connection: SOCKS5 if it starts with 0x05, else HTTP."""
        self.connections += 1
        try:
            first = await stream.read_bytes(1)
            if first == b"\x05":
                await self._socks5(stream)
            else:
                await self._http(stream, first)
        except (StreamClosedError, OSError, ValueError):
            stream.close()

    async def _http(self, stream: IOStream, first: bytes) -> None:
        head = (first + await stream.read_until(b"\r\n\r\n", max_bytes=65536)).decode("latin-1")
        request_line, *header_lines = head.rstrip("\r\n").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        self.requests.append(f"{method} {target}")
        headers = [line for line in header_lines if line]
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                scheme, _, token = value.strip().partition(" ")
                if scheme.lower() == "basic":
                    self.credentials.append(base64.b64decode(token).decode("utf-8"))
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await TCPClient().connect(host.strip("[]"), int(port))
            await stream.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe_pair(stream, upstream, watch_tls=True)
            return
        # An absolute-URI request: forward it in origin form, one request per connection.
        parts = urlsplit(target)
        upstream = await TCPClient().connect(parts.hostname or "", parts.port or 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        kept = [
            line for line in headers if line.partition(":")[0].strip().lower() not in _HOP_HEADERS
        ]
        forwarded = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
        await upstream.write(forwarded.encode("latin-1") + b"\r\n\r\n")
        self._pipe_pair(stream, upstream, watch_tls=False)

    async def _socks5(self, stream: IOStream) -> None:
        count = (await stream.read_bytes(1))[0]
        methods = await stream.read_bytes(count)
        if 2 in methods:  # username and password (RFC 1929)
            await stream.write(b"\x05\x02")
            await stream.read_bytes(1)
            user = await stream.read_bytes((await stream.read_bytes(1))[0])
            password = await stream.read_bytes((await stream.read_bytes(1))[0])
            self.credentials.append(f"{user.decode()}:{password.decode()}")
            await stream.write(b"\x01\x00")
        else:
            await stream.write(b"\x05\x00")
        _version, command, _reserved, kind = await stream.read_bytes(4)
        if kind == 1:
            host = socket.inet_ntop(socket.AF_INET, await stream.read_bytes(4))
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, await stream.read_bytes(16))
        else:
            host = (await stream.read_bytes((await stream.read_bytes(1))[0])).decode()
        (port,) = struct.unpack(">H", await stream.read_bytes(2))
        self.requests.append(f"SOCKS5 {'CONNECT' if command == 1 else command} {host}:{port}")
        upstream = await TCPClient().connect(host, port)
        await stream.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        self._pipe_pair(stream, upstream, watch_tls=False)

    def _pipe_pair(self, client: IOStream, upstream: IOStream, watch_tls: bool) -> None:
        _pipe(upstream, client, None)
        _pipe(client, upstream, self.server_names if watch_tls else None)

    def close(self) -> None:
        """Stop listening."""
        self.stop()


def _pipe(source: IOStream, sink: IOStream, names: list[str] | None) -> None:
    """Copy ``source`` to ``sink`` in the background until either side closes."""
    task = asyncio.ensure_future(_copy(source, sink, names))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _copy(source: IOStream, sink: IOStream, names: list[str] | None) -> None:
    first = True
    try:
        while True:
            data = await source.read_bytes(65536, partial=True)
            if first and names is not None:
                name = server_name(data)
                if name is not None:
                    names.append(name)
            first = False
            await sink.write(data)
    except StreamClosedError:
        pass
    finally:
        sink.close()
        source.close()


def server_name(record: bytes) -> str | None:
    """The server name (SNI) of a TLS ClientHello, or None if ``record`` does not start one."""
    if len(record) < 43 or record[0] != 0x16 or record[5] != 0x01:
        return None
    offset = 43  # record header 5, handshake header 4, version 2, random 32
    offset += 1 + record[offset]  # session id
    (suites,) = struct.unpack(">H", record[offset : offset + 2])
    offset += 2 + suites
    offset += 1 + record[offset]  # compression methods
    (total,) = struct.unpack(">H", record[offset : offset + 2])
    offset += 2
    end = offset + total
    while offset + 4 <= end:
        kind, length = struct.unpack(">HH", record[offset : offset + 4])
        if kind == 0:  # server_name: list length 2, name type 1, name length 2, name
            (size,) = struct.unpack(">H", record[offset + 7 : offset + 9])
            return record[offset + 9 : offset + 9 + size].decode("ascii")
        offset += 4 + length
    return None
