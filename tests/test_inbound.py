"""Inbound limits: the descriptor limit, the connection cap, accept errors, timeouts, framing."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import CLIENT_KEYS, Calls, with_env
from fakes import FakeOrigin, png_bytes
from processes import Gateway, clean_env
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_imagegate.handlers.base import JsonApiHandler, upload_body_limit
from tornado_imagegate.listener import GatewayHTTPServer, default_connection_cap
from tornado_imagegate.options import OPTION
from tornado_imagegate.server import (
    IDLE_CONNECTION_TIMEOUT,
    SERVER_MAX_BODY_BYTES,
    make_http_server,
)

DEADLINE = 30.0
KEY = CLIENT_KEYS[0]
HEALTH = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
# Headers of a request whose body never comes: the connection is busy, not idle.
BUSY = b"POST /health HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10\r\n\r\n"
QUIET_LOG_LINES = 50

# Chat completions takes input images as data URIs: its body limit has room for them.
CHAT_BODY_LIMIT = upload_body_limit(OPTION["IMAGE_INPUT_MAX_BYTES"].default)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_envelope(raw: bytes, status: int, code: str) -> dict[str, str]:
    """One answer with this status, closing the connection, the OpenAI error envelope as body."""
    got, headers, body = parse_answer(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    return headers


def assert_framing_envelope(raw: bytes, status: int, code: str) -> None:
    """Like assert_envelope, for an answer to a malformed request, which Tornado writes itself.

    listener.framing_error_answer puts the envelope in its place, relying on private details of
    Tornado: failing, this names them.
    """
    head = raw.partition(b"\r\n\r\n")[0]
    if raw.startswith(b"HTTP/1.1 ") and b"application/json" not in head:
        pytest.fail(
            "Tornado's answer to a malformed request reached the client unchanged: it is no "
            "longer the exact bytes listener.framing_error_answer replaces (b'HTTP/1.1 400 Bad "
            f"Request\\r\\n\\r\\n', written by HTTP1Connection): {raw[:200]!r}",
            pytrace=False,
        )
    if status == 413 and raw.startswith(b"HTTP/1.1 400"):
        pytest.fail(
            "A body over the server's limit got 400, not 413: Tornado's message for it no longer "
            "ends with 'too long' or 'too large', which listener.framing_error_answer looks for",
            pytrace=False,
        )
    assert_envelope(raw, status, code)


# --- in-process: the server as make_http_server builds it, over loopback ---


@pytest.fixture
def serve(io_loop, app):
    """Start the gateway app on its own server with these options; return its port and it."""
    servers = []

    def start(**options: Any) -> tuple[int, GatewayHTTPServer]:
        server = make_http_server(app, **options)
        sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        server.add_sockets(sockets)
        servers.append(server)
        return sockets[0].getsockname()[1], server

    yield start
    for server in servers:
        server.stop()
        io_loop.run_sync(server.close_all_connections, timeout=10)


async def connect(port: int) -> IOStream:
    """A client connection to the gateway."""
    stream = IOStream(socket.socket(socket.AF_INET))
    await stream.connect(("127.0.0.1", port))
    return stream


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the server sends before it closes."""
    stream = await connect(port)
    await stream.write(request)
    return await asyncio.wait_for(stream.read_until_close(), DEADLINE)


async def until_closed(stream: IOStream, deadline: float = DEADLINE) -> bytes:
    """What the server sends until it closes the connection."""
    return await asyncio.wait_for(stream.read_until_close(), deadline)


@pytest.mark.gen_test(timeout=60)
async def test_a_silent_connection_is_closed_after_the_idle_timeout(serve):
    port, _ = serve(idle_timeout=0.5)
    # Generous for 0.5 s, and well short of the production timeout.
    deadline = IDLE_CONNECTION_TIMEOUT / 2
    silent = await connect(port)
    assert await until_closed(silent, deadline) == b""
    kept_alive = await connect(port)
    await kept_alive.write(HEALTH.replace(b"Connection: close", b"Connection: keep-alive"))
    answer = await until_closed(kept_alive, deadline)  # the answer, then nothing more
    assert answer.startswith(b"HTTP/1.1 200")


@pytest.mark.gen_test(timeout=60)
async def test_headers_sent_a_byte_at_a_time_do_not_outlast_the_idle_timeout(serve):
    port, _ = serve(idle_timeout=0.5)
    trickle = await connect(port)
    started = time.monotonic()
    with pytest.raises(StreamClosedError):
        for byte in HEALTH:  # each byte well inside the timeout, the whole far beyond it
            await trickle.write(bytes([byte]))
            await asyncio.sleep(0.1)
    # Closed once the headers had taken the idle timeout, not when the last byte came.
    assert time.monotonic() - started < len(HEALTH) * 0.1 / 2


@pytest.mark.gen_test(timeout=60)
async def test_a_request_longer_than_the_idle_timeout_is_answered_then_its_silence_counts(serve):
    port, server = serve(idle_timeout=0.5)
    closed = Calls(server, "on_close")
    # A body that takes twice the idle timeout to come: the connection is busy, not idle.
    stream = await connect(port)
    await stream.write(b"POST /health HTTP/1.1\r\nHost: gateway\r\nContent-Length: 4\r\n\r\nab")
    await asyncio.sleep(1.0)
    assert not stream.closed()
    await stream.write(b"cd")
    head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), DEADLINE)
    assert head.startswith(b"HTTP/1.1 405")  # answered: nothing cut it off
    assert b"connection: close" not in head.lower()
    # Kept alive and then silent, it is closed by the idle timeout counted from its answer.
    await until_closed(stream, IDLE_CONNECTION_TIMEOUT / 2)
    await closed.reach(1)


def test_tornado_keeps_the_header_timeout_where_the_server_takes_it_from():
    server = HTTPServer(lambda request: None, idle_connection_timeout=7.0)
    assert server.conn_params.header_timeout == 7.0  # what GatewayHTTPServer reads, then clears
    gateway = make_http_server(Application(), max_connections=10, idle_timeout=7.0)
    assert gateway.conn_params.header_timeout is None
    assert gateway.idle.timeout == 7.0


# A body announced and then sent slowly, and the same in chunks.
SLOW_BODY = b"POST /health HTTP/1.1\r\nHost: gateway\r\nContent-Length: 40\r\n\r\n"
SLOW_CHUNKED = b"POST /health HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n"


async def trickle_body(stream: IOStream, piece: bytes, pieces: int = 40) -> float:
    """Send ``piece`` every 0.1 s until the server closes the connection; the seconds it took
    (the whole would take ``pieces`` tenths)."""
    started = time.monotonic()
    with pytest.raises(StreamClosedError):
        for _ in range(pieces):
            await stream.write(piece)
            await asyncio.sleep(0.1)
        await until_closed(stream)  # still open after the whole body: no timeout cut it
        pytest.fail("the body's connection was answered, not cut off by the body timeout")
    return time.monotonic() - started


class SlowAnswer(RequestHandler):
    """Answers a POST a second after its body is in: longer than the tests' body timeout."""

    async def post(self) -> None:
        await asyncio.sleep(1.0)
        self.write(b"answered " + self.request.body)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    ("head", "piece"), [(SLOW_BODY, b"x"), (SLOW_CHUNKED, b"1\r\nx\r\n")], ids=["length", "chunked"]
)
async def test_a_body_sent_a_byte_at_a_time_does_not_outlast_the_body_timeout(
    serve, caplog, head, piece
):
    port, _ = serve(body_timeout=0.5)  # the idle timeout stays far longer
    streams = [await connect(port) for _ in range(2)]
    for stream in streams:
        await stream.write(head)
    # Each piece well inside the idle timeout, the whole (4 s) far beyond the body timeout.
    took = await asyncio.gather(*(trickle_body(stream, piece) for stream in streams))
    assert max(took) < 2.0  # cut once the body had taken the body timeout, not at its end
    # Both cut, reported once: a flood of slow bodies does not flood the log.
    cut = [r for r in caplog.records if "did not arrive within 0.5 s" in r.getMessage()]
    assert len(cut) == 1, caplog.text
    assert "from 127.0.0.1" in cut[0].getMessage()


@pytest.mark.gen_test(timeout=60)
async def test_the_body_timeout_counts_each_request_body_not_its_answer(io_loop):
    server = make_http_server(
        Application([("/slow", SlowAnswer)]), max_connections=10, body_timeout=0.5
    )
    sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server.add_sockets(sockets)
    try:
        stream = await connect(sockets[0].getsockname()[1])
        request = b"POST /slow HTTP/1.1\r\nHost: gateway\r\nContent-Length: 6\r\n\r\n"
        # The body in time, the answer a second later: twice the body timeout, not cut.
        await stream.write(request + b"first!")
        head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200")
        assert await stream.read_bytes(len(b"answered first!")) == b"answered first!"
        # Kept alive, a second request's body has its own clock: sent in two halves 0.3 s
        # apart, it comes 1.3 s after the first body began, and is answered.
        await stream.write(request + b"sec")
        await asyncio.sleep(0.3)
        await stream.write(b"ond")
        head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200")
        assert await stream.read_bytes(len(b"answered second")) == b"answered second"
        # A third, trickled, is cut: the clock runs again on a kept-alive connection.
        await stream.write(request.replace(b"Length: 6", b"Length: 40"))
        assert await trickle_body(stream, b"x") < 2.0
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.gen_test(timeout=60)
async def test_nagle_stays_off_on_client_connections_across_answers(serve):
    port, server = serve()
    stream = await connect(port)
    keep_alive = HEALTH.replace(b"Connection: close", b"Connection: keep-alive")
    for _ in range(2):
        await stream.write(keep_alive)
        head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        await stream.read_bytes(length)
        # Between answers, where Tornado would have turned Nagle's algorithm back on.
        (connection,) = server._connections
        sock = connection.stream.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    stream.close()


def test_every_handler_takes_each_piece_of_a_body_at_once(app):
    # BodyReads counts a body as unread while a read of it is pending. A data_received that
    # returned a future would pause Tornado's reads while it ran, and hide a slow body from the
    # body timeout: a handler that needs one must change BodyReads first.
    rules = app.wildcard_router.rules
    handlers = {rule.target for rule in rules} | {app.settings["default_handler_class"]}
    assert len(handlers) > 10
    for handler in handlers:
        taken = inspect.unwrap(handler.data_received)
        assert taken in (RequestHandler.data_received, JsonApiHandler.data_received), handler
        assert not inspect.iscoroutinefunction(taken)


def test_tornado_keeps_the_body_timeout_where_the_server_takes_it_from():
    server = HTTPServer(lambda request: None, body_timeout=7.0)
    assert server.conn_params.body_timeout == 7.0  # what GatewayHTTPServer reads, then clears
    gateway = make_http_server(Application(), max_connections=10, body_timeout=7.0)
    assert gateway.conn_params.body_timeout is None
    assert gateway.bodies is not None and gateway.bodies.timeout == 7.0


@pytest.mark.gen_test(timeout=60)
async def test_at_the_cap_the_longest_idle_connection_makes_room(serve):
    port, server = serve(max_connections=2)
    served = Calls(server, "handle_stream")
    oldest = await connect(port)
    newer = await connect(port)
    await served.reach(2)  # the server serves both: they count as idle
    answer = await exchange(port, HEALTH)
    assert answer.startswith(b"HTTP/1.1 200")
    assert await until_closed(oldest) == b""
    assert not newer.closed()
    newer.close()


@pytest.mark.gen_test(timeout=60)
@with_env({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true"})
async def test_at_the_cap_a_connection_being_answered_stays_and_is_idle_again_after(serve, app):
    origin = FakeOrigin()
    try:
        held = origin.hold("slow.png", png_bytes())
        query = urlencode(app.services.store.signer.query_for_url(origin.url("slow.png")))
        port, server = serve(max_connections=2)
        served = Calls(server, "handle_stream")
        answered = await connect(port)  # the oldest, busy with a request that has no body
        await answered.write(f"GET /image-proxy?{query} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        await held.asked.wait()  # the gateway has the headers and fetches the image
        idle = await connect(port)
        await served.reach(2)
        assert (await exchange(port, HEALTH)).startswith(b"HTTP/1.1 200")
        assert await until_closed(idle) == b""  # the idle one made room, not the busy one
        assert not answered.closed()
        held.release.set()
        answer = await asyncio.wait_for(answered.read_until(b"\r\n0\r\n\r\n"), DEADLINE)
        assert answer.startswith(b"HTTP/1.1 200")
        # Kept alive, it waits for its next request: idle again, and now the longest idle.
        newer = await connect(port)
        await served.reach(4)
        assert (await exchange(port, HEALTH)).startswith(b"HTTP/1.1 200")
        assert await until_closed(answered) == b""
        assert not newer.closed()
        newer.close()
    finally:
        origin.close()


@pytest.mark.gen_test(timeout=60)
async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(serve):
    port, server = serve(max_connections=2)
    closed = Calls(server, "on_close")
    busy = []
    for _ in range(2):
        stream = await connect(port)
        await stream.write(BUSY.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
        # The interim answer shows the server has the headers: the connection is busy.
        assert (await stream.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        busy.append(stream)
    headers = assert_envelope(await exchange(port, HEALTH), 503, "too_many_connections")
    assert headers["retry-after"] == "1"
    busy[0].close()
    await closed.reach(1)  # the server noticed the close on its next read
    answer = await exchange(port, HEALTH)
    assert answer.startswith(b"HTTP/1.1 200")
    busy[1].close()


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
    ids=["header-line", "request-line", "content-length", "chunk-size", "transfer-encoding"],
)
async def test_malformed_framing_gets_400_in_the_envelope(http_server, http_port, request_bytes):
    assert_framing_envelope(await exchange(http_port, request_bytes), 400, "bad_request")


@pytest.mark.gen_test
async def test_malformed_framing_on_a_kept_alive_connection_gets_400_in_the_envelope(
    http_server, http_port
):
    first = HEALTH.replace(b"Connection: close", b"Connection: keep-alive")
    raw = await exchange(http_port, first + b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n")
    ok, _, second = raw.partition(b"HTTP/1.1 400")
    assert ok.startswith(b"HTTP/1.1 200")
    assert_framing_envelope(b"HTTP/1.1 400" + second, 400, "bad_request")


@pytest.mark.gen_test
async def test_a_declared_body_over_the_server_limit_gets_413_in_the_envelope(
    http_server, http_port
):
    request = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
        SERVER_MAX_BODY_BYTES + 1
    )
    assert_framing_envelope(await exchange(http_port, request), 413, "request_too_large")


@pytest.mark.gen_test(timeout=60)
async def test_a_chunked_body_far_over_the_limit_gets_413_as_soon_as_it_passes(
    http_server, http_port
):
    stream = await connect(http_port)
    await stream.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    try:
        # A little over the limit and never the last chunk: only an early answer can come.
        for _ in range(CHAT_BODY_LIMIT // len(chunk) + 8):
            await stream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except StreamClosedError:
        pass  # the server answered and closed while this was still sending
    got, headers, body = parse_answer(await until_closed(stream))
    assert got == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("limit", "upstream", "cap"),
    [
        (65536, 1024, 65536 - 64 - 1024),
        (1024, 1024, 480),  # upstream sockets get at most half of what is left
        (256, 1024, 96),
        (256, 10, 182),
        (8, 1024, 3),
    ],
)
def test_default_cap_leaves_room_for_upstream_sockets_and_a_reserve(limit, upstream, cap):
    assert default_connection_cap(limit, upstream) == cap
    assert 0 < cap < limit


# --- the real command, started with a low descriptor limit ---


def descriptor_limit(soft: int, hard: int) -> Callable[[], None]:
    """Run in the child before exec: set its RLIMIT_NOFILE."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def start_gateway(tmp_path: Path, soft: int, hard: int, **env: str) -> tuple[Gateway, int]:
    """The ``imagegate`` command with this descriptor limit; return it and its port."""
    gateway = Gateway(
        ["--port", "0"],
        clean_env(AUTHORIZED_API_KEY=KEY, **env),
        tmp_path / "stderr.log",
        preexec_fn=descriptor_limit(soft, hard),
    )
    base = gateway.wait_listening()
    return gateway, int(base.rsplit(":", 1)[1])


def get_health(port: int) -> int:
    """GET /health on a new connection; its status.

    A refused or reset connection, or a 503, is retried as a client would, until the deadline:
    the server recovers from running out of descriptors on a schedule of its own.
    """
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
                sock.sendall(HEALTH)
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
            status = parse_answer(raw)[0]
            if status != 503:
                return status
        except (ConnectionError, AssertionError):
            pass
        assert time.monotonic() < deadline, "no answer from /health in time"
        time.sleep(0.1)


def assert_quiet(stderr: str) -> None:
    """No traceback, and a log that stays short."""
    assert "Traceback" not in stderr, stderr[:3000]
    assert len(stderr.splitlines()) < QUIET_LOG_LINES, stderr[:3000]


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit(tmp_path):
    gateway, _ = start_gateway(tmp_path, 256, 4096)
    try:
        limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
        assert re.search(r"^Max open files\s+4096\s+4096\s", limits, re.MULTILINE), limits
        gateway.wait_for_stderr(r"descriptor limit raised from 256 to 4096")
    finally:
        gateway.close()


def test_an_idle_flood_over_the_descriptor_limit_leaves_health_answering(tmp_path):
    gateway, port = start_gateway(tmp_path, 256, 256)
    flood: list[socket.socket] = []
    try:
        gateway.wait_for_stderr(r"accepting up to 96 client connections \(descriptor limit 256\)")
        for _ in range(400):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
        assert get_health(port) == 200
        gateway.process.send_signal(signal.SIGTERM)  # stopping reports what is still uncounted
        assert gateway.process.wait(timeout=DEADLINE) == 0
        closed = gateway.wait_for_stderr(r"closed (\d+) more idle connection\(s\)")
        assert sum(int(match.group(1)) for match in closed) >= 400 - 96
        assert "refus" not in gateway.stderr()  # idle ones made room: nobody was turned away
        assert_quiet(gateway.stderr())
    finally:
        for sock in flood:
            sock.close()
        gateway.close()


def test_accept_errors_pause_the_accept_loop_and_it_recovers(tmp_path):
    # A cap the descriptors cannot cover, and connections that are busy (nothing to close):
    # accept() itself fails with EMFILE.
    gateway, port = start_gateway(tmp_path, 128, 128, MAX_CLIENT_CONNECTIONS="1000")
    busy: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            sock.sendall(BUSY)
            busy.append(sock)
        gateway.wait_for_stderr(r"cannot accept connections: Too many open files \(EMFILE\)")
        time.sleep(2)  # out of descriptors for a while: a spinning loop fails 100,000s of times
        for sock in busy:
            sock.close()
        busy.clear()
        assert get_health(port) == 200
        gateway.process.send_signal(signal.SIGTERM)  # stopping reports what is still uncounted
        assert gateway.process.wait(timeout=DEADLINE) == 0
        failed = gateway.wait_for_stderr(r"(\d+) more accept\(s\) failed")
        assert 0 < sum(int(match.group(1)) for match in failed) < 200
        assert "MAX_CLIENT_CONNECTIONS=1000 is more than" in gateway.stderr()
        assert_quiet(gateway.stderr())
    finally:
        for sock in busy:
            sock.close()
        gateway.close()
