"""The listening sockets: the descriptor limit, the connection cap, accept and framing errors."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import resource
import socket
import sys
from collections.abc import Awaitable, Iterable
from http import HTTPStatus
from typing import Any, cast

from tornado import httputil
from tornado.concurrent import Future
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from tornado_imagegate import errors
from tornado_imagegate.errors import GatewayError

logger = logging.getLogger(__name__)

# Descriptors kept out of the connection cap whatever the limit: stdio, the event loop, the
# listening sockets, DNS lookups, log and cache files (the disk cache opens one file at a time).
FIXED_RESERVE = 64
# Where the hard limit is "unlimited", Linux still refuses more than fs.nr_open (this default).
UNLIMITED_FALLBACK = 1024 * 1024
# As Tornado's own accept handler: the listen backlog, so other callbacks get a turn.
ACCEPTS_PER_WAKEUP = 128
FIRST_PAUSE = 0.05
LONGEST_PAUSE = 1.0
REPORT_INTERVAL = 10.0


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        logger.info("descriptor limit: %s (already the hard limit)", soft)
        return current_descriptor_limit()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError) as exc:
        logger.warning("descriptor limit: %d; could not raise it to %d: %s", soft, wanted, exc)
        return soft
    logger.info("descriptor limit raised from %d to %d (the hard limit)", soft, wanted)
    return wanted


def current_descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` now in force."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return UNLIMITED_FALLBACK if soft == resource.RLIM_INFINITY else soft


def default_connection_cap(descriptor_limit: int, upstream_max_clients: int) -> int:
    """How many client connections fit under ``descriptor_limit``, leaving room for the rest.

    A fixed reserve (a quarter of a tiny limit) comes off first; upstream transfers get their
    configured number of sockets, but never more than half of what is left, so that a low limit
    still serves clients.
    """
    reserve = min(FIXED_RESERVE, descriptor_limit // 4)
    available = descriptor_limit - reserve
    upstream = min(upstream_max_clients, available // 2)
    return max(1, available - upstream)


def connection_cap(
    configured: int,
    upstream_max_clients: int,
    descriptor_limit: int | None = None,
    workers: int = 1,
) -> int:
    """One process's cap: its share of ``MAX_CLIENT_CONNECTIONS`` if set (warns if descriptors
    can't cover it), else the default.

    The descriptor limit is per process, so each of several workers fits the default under its
    own; a configured cap is the gateway's whole, split between the workers.
    """
    limit = current_descriptor_limit() if descriptor_limit is None else descriptor_limit
    fitting = default_connection_cap(limit, upstream_max_clients)
    if not configured:
        return fitting
    share = -(-configured // workers)  # rounded up: every worker serves at least one
    if share > fitting:
        logger.warning(
            "MAX_CLIENT_CONNECTIONS=%d is more than the descriptor limit of %d leaves room for "
            "(%d%s): expect accept errors (EMFILE) under load",
            configured,
            limit,
            fitting,
            f" in each of {workers} workers" if workers > 1 else "",
        )
    return share


def plain_answer(error: GatewayError, *headers: str) -> bytes:
    """A whole HTTP/1.1 answer, closing the connection, with ``error`` in the OpenAI envelope."""
    body = json.dumps(error.envelope(), separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TOO_MANY_CONNECTIONS = plain_answer(
    GatewayError(
        503,
        "too_many_connections",
        "The gateway has too many open connections; retry shortly.",
        error_type="server_error",
    ),
    "Retry-After: 1",
)
BAD_REQUEST = plain_answer(errors.from_status(400))
TOO_LARGE = plain_answer(errors.from_status(413))

# Tornado answers every HTTPInputError (a bad request line or header, bad chunk framing, a body
# over max_body_size) by writing exactly these bytes from inside the ``except HTTPInputError``
# block of HTTP1Connection._read_message_inner, so the exception being handled at that moment
# is the one it refuses; the limit errors say "too long" or "too large". Both are private
# details of Tornado, kept to this function and pinned by tests/test_inbound.py.
_TORNADO_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"


def framing_error_answer(data: bytes | memoryview) -> bytes | None:
    """Our answer in place of Tornado's bare framing 400, or None if ``data`` is not that."""
    if len(data) != len(_TORNADO_BARE_400) or bytes(data) != _TORNADO_BARE_400:
        return None
    refused = sys.exc_info()[1]
    if isinstance(refused, httputil.HTTPInputError) and str(refused).endswith(
        ("too long", "too large")
    ):
        return TOO_LARGE
    return BAD_REQUEST


class ConnectionClock:
    """Connections in the order they entered a phase, and one timer that closes those still in
    it once they have spent ``timeout`` there.

    Tornado arms a timer of its own around every request's header read and body read (its
    ``header_timeout`` and ``body_timeout``: a future, a timer and callbacks each time); one
    timer for all connections, due when the one that entered first runs out, closes the same
    connections at the same moments. A connection that has left the phase leaves the queue when
    it is next looked at, and joins it again when it next enters.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Each connection and the loop time it entered the phase, in that order.
        self.waiting: dict[GatewayStream, float] = {}
        self._timer: object | None = None

    def enter(self, stream: GatewayStream, now: float) -> None:
        """``stream`` entered the phase at loop time ``now``."""
        waiting = self.waiting
        waiting.pop(stream, None)
        waiting[stream] = now
        if self._timer is None:
            self._timer = stream.io_loop.call_at(now + self.timeout, self._close_expired)

    def forget(self, stream: IOStream) -> None:
        """``stream`` is closed."""
        self.waiting.pop(cast(GatewayStream, stream), None)

    def still_in(self, stream: GatewayStream, since: float) -> bool:
        """Whether ``stream`` is still in the phase it entered at ``since``."""
        raise NotImplementedError

    def expire(self, stream: GatewayStream) -> None:
        """Close a connection whose time in the phase is up."""
        stream.close()

    def _close_expired(self) -> None:
        self._timer = None
        waiting = self.waiting
        now = IOLoop.current().time()
        while waiting:
            oldest, since = next(iter(waiting.items()))
            deadline = since + self.timeout
            if deadline > now:
                self._timer = oldest.io_loop.call_at(deadline, self._close_expired)
                return
            del waiting[oldest]
            if self.still_in(oldest, since):
                self.expire(oldest)


class IdleConnections(ConnectionClock):
    """The connections waiting for a request's headers, the longest-waiting first: silent for
    longer than the idle timeout, they are closed without an answer (as by Tornado's header
    timeout)."""

    def start_waiting(self, stream: GatewayStream) -> None:
        """``stream`` waits for a request's headers from now on."""
        self.enter(stream, stream.io_loop.time())

    def still_in(self, stream: GatewayStream, since: float) -> bool:
        """Whether ``stream`` still waits for a request (or for the rest of its headers)."""
        return stream.is_idle()

    def pop_oldest_idle(self) -> GatewayStream | None:
        """Take the connection waiting longest for a request out of the queue; None if none
        waits (those busy with a request leave the queue on the way)."""
        waiting = self.waiting
        while waiting:
            oldest = next(iter(waiting))
            del waiting[oldest]
            if oldest.is_idle():
                return oldest
        return None


class BodyReads(ConnectionClock):
    """The connections reading a request's body, in the order their bodies began: a body not
    whole within the body timeout closes its connection without an answer (as Tornado's body
    timeout did), reported at most once per interval."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.cut = Tally(
            f"a request body did not arrive within {timeout:g} s; closing its connection "
            "(from %(detail)s)",
            f"closed %(count)d more connection(s) whose request body took over {timeout:g} s "
            "in the last %(seconds).1f s (the latest from %(detail)s)",
        )

    def still_in(self, stream: GatewayStream, since: float) -> bool:
        """Whether ``stream`` is still reading the body it began at ``since``."""
        return stream.reading_body(since)

    def expire(self, stream: GatewayStream) -> None:
        """Close the connection: its reader sees the stream closed, as when a client leaves."""
        self.cut.add(stream.peer)
        stream.close()


class GatewayStream(IOStream):
    """A client connection whose framing errors are answered in the OpenAI envelope, which
    tells whether it is idle (waiting for a request's headers: ``IdleConnections``) or reading
    a request's body (``BodyReads``), and which keeps Nagle's algorithm off."""

    # Kept out of the instance's __dict__: IOStream has 27 attributes there, and past 30 Python
    # stops sharing a dict's keys between instances, which slows every attribute look-up on the
    # stream (about 2 % more instructions per cache hit with ours among them).
    __slots__ = ("bodies", "body_since", "header_read", "idle", "peer")

    def __init__(
        self,
        *args: Any,
        idle: IdleConnections,
        bodies: BodyReads | None = None,
        peer: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.idle = idle
        self.bodies = bodies
        self.peer = peer
        self.header_read: Awaitable[bytes] | None = None
        # The loop time the body of the request being read began to be read (None until then).
        self.body_since: float | None = None
        if self.socket.family in (socket.AF_INET, socket.AF_INET6):
            # As in Tornado's set_nodelay: it fails if the client already closed (EINVAL).
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def set_nodelay(self, value: bool) -> None:
        """Leave Nagle's algorithm off, as it was set when the connection was accepted.

        Tornado turns it off to flush each answer's end and on again after it: two system calls
        per request. The gateway writes each answer, and each event of a stream, when it has
        it whole, so nothing is gained by holding small writes back.
        """

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        """Read a request's header block (Tornado reads nothing else so): the connection is
        idle until it is in. Noted once per request here, not by a delegate around each."""
        read = self.header_read = super().read_until_regex(regex, max_bytes)
        self.body_since = None
        self.idle.start_waiting(self)
        return read

    def read_bytes(self, num_bytes: int, partial: bool = False) -> Awaitable[bytes]:
        """Read part of a request's body (Tornado reads nothing else so); the first read of a
        body starts its clock."""
        if self.body_since is None:
            self._start_body()
        return super().read_bytes(num_bytes, partial)

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        """Read the size line of a chunked body's chunk; as ``read_bytes``."""
        if self.body_since is None:
            self._start_body()
        return super().read_until(delimiter, max_bytes)

    def _start_body(self) -> None:
        now = self.body_since = self.io_loop.time()
        if self.bodies is not None:
            self.bodies.enter(self, now)

    def reading_body(self, since: float) -> bool:
        """Whether the connection still reads the body it began to read at ``since``.

        Between two requests' headers, Tornado reads only the body, one read at a time, and
        waits for nothing else while the body is unread: the gateway's handlers take each piece
        of a body at once (no ``data_received`` returns a future; tests/test_inbound.py checks
        every route). So a read pending since then is that body's.
        """
        return self.body_since == since and self.reading()

    def is_idle(self) -> bool:
        """Whether the connection waits for a request (or for the rest of its headers)."""
        read = self.header_read
        return read is None or not cast(Future, read).done()

    def write(self, data: bytes | memoryview) -> Future[None]:
        """Write ``data``, putting our answer in place of Tornado's bare framing 400."""
        if len(data) == len(_TORNADO_BARE_400):  # anything longer is a normal answer
            data = framing_error_answer(data) or data
        return super().write(data)


class Tally:
    """Counts a recurring event and logs it at most once per interval: a line when it starts,
    then a count for each interval that had more, then silence once an interval has none.

    ``summary`` is %-formatted with a mapping: ``count``, ``seconds`` and ``detail``.
    """

    def __init__(self, first: str, summary: str, interval: float = REPORT_INTERVAL) -> None:
        self.first = first
        self.summary = summary
        self.interval = interval
        self.count = 0
        self.detail = ""
        self.since = 0.0
        self.timer: object | None = None

    def add(self, detail: str = "") -> None:
        """Count one event; log now if it is the first in a while."""
        self.detail = detail
        if self.timer is None:
            logger.warning(self.first, {"detail": detail})
            self._start_interval()
        else:
            self.count += 1

    def stop(self) -> None:
        """Report what is still uncounted now, and stop the timer (the server is stopping)."""
        if self.timer is not None:
            IOLoop.current().remove_timeout(self.timer)
            self.timer = None
        self._report()

    def _start_interval(self) -> None:
        io_loop = IOLoop.current()
        self.since = io_loop.time()
        self.timer = io_loop.call_later(self.interval, self._on_interval)

    def _on_interval(self) -> None:
        self.timer = None
        if self._report():
            self._start_interval()  # still rate-limited: the next event is counted, not logged

    def _report(self) -> bool:
        if not self.count:
            return False
        seconds = IOLoop.current().time() - self.since
        logger.warning(
            self.summary, {"count": self.count, "seconds": seconds, "detail": self.detail}
        )
        self.count = 0
        return True


class _Acceptor:
    """Accepts connections on one listening socket, pausing (50 ms doubling to 1 s) while
    accept() fails, where Tornado's accept handler would raise on every wake-up."""

    def __init__(self, sock: socket.socket, server: GatewayHTTPServer) -> None:
        self.sock = sock
        self.server = server
        self.io_loop = IOLoop.current()
        self.pause = FIRST_PAUSE
        self.resume_timer: object | None = None
        self.closed = False
        self.io_loop.add_handler(sock, self._on_readable, IOLoop.READ)

    def _on_readable(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if self.closed or self.resume_timer is not None:
                return
            try:
                connection, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # Mostly EMFILE, ENFILE, ENOBUFS or ENOMEM: out of descriptors or kernel memory,
                # which only time cures. A rarer, per-connection error costs a short pause too.
                self.server.accept_errors.add(
                    f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0)})"
                )
                self._pause()
                return
            self.pause = FIRST_PAUSE
            self.server.accepted(connection, address)

    def _pause(self) -> None:
        self.io_loop.remove_handler(self.sock)
        self.resume_timer = self.io_loop.call_later(self.pause, self._resume)
        self.pause = min(self.pause * 2, LONGEST_PAUSE)

    def _resume(self) -> None:
        self.resume_timer = None
        if not self.closed:
            self.io_loop.add_handler(self.sock, self._on_readable, IOLoop.READ)

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        if self.closed:
            return
        self.closed = True
        if self.resume_timer is None:
            self.io_loop.remove_handler(self.sock)
        else:
            self.io_loop.remove_timeout(self.resume_timer)
            self.resume_timer = None
        self.sock.close()


class GatewayHTTPServer(HTTPServer):
    """Tornado's HTTP server with our own accept loop, a cap on open client connections and
    framing errors answered in the OpenAI envelope.

    At the cap, the connection idle longest (waiting for a request, or slowly sending one's
    headers) is closed to make room, as nginx reuses keep-alive connections when it runs short;
    only when every connection is busy with a request is the new one refused with a 503.
    """

    def initialize(  # type: ignore[override]
        self, *args: Any, max_connections: int, **kwargs: Any
    ) -> None:
        """Tornado's settings, plus the cap on open client connections."""
        super().initialize(*args, **kwargs)
        if self.ssl_options is not None:
            raise ValueError("TLS is not served here: terminate it in a reverse proxy")
        self.max_connections = max_connections
        self.open_connections = 0
        # The idle timeout (Tornado's header_timeout, from idle_connection_timeout) is kept by
        # one timer for every connection rather than by Tornado around each request.
        self.idle = IdleConnections(self.conn_params.header_timeout or 3600)
        self.conn_params.header_timeout = None
        # So is the body timeout: one timer for every body being read.
        body_timeout = self.conn_params.body_timeout
        self.bodies = BodyReads(body_timeout) if body_timeout is not None else None
        self.conn_params.body_timeout = None
        self._closed_for_room: set[IOStream] = set()
        self._acceptors: list[_Acceptor] = []
        self.accept_errors = Tally(
            "cannot accept connections: %(detail)s; pausing accepts (50 ms, doubling to 1 s)",
            "%(count)d more accept(s) failed in the last %(seconds).1f s: %(detail)s",
        )
        self.closed_idle = Tally(
            f"the cap of {max_connections} client connections is reached: closing the "
            "longest-idle connection for each new one",
            "closed %(count)d more idle connection(s) in the last %(seconds).1f s to stay under "
            f"the cap of {max_connections}",
        )
        self.refused = Tally(
            f"the cap of {max_connections} client connections is reached and every one is busy: "
            "refusing new connections with 503",
            "refused %(count)d more connection(s) over the cap of "
            f"{max_connections} in the last %(seconds).1f s",
        )

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Start accepting connections on these listening sockets, with our accept loop."""
        for sock in sockets:
            self._acceptors.append(_Acceptor(sock, self))

    def stop(self) -> None:
        """Stop listening; connections already open go on."""
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors.clear()
        for tally in (self.accept_errors, self.closed_idle, self.refused):
            tally.stop()
        if self.bodies is not None:
            self.bodies.cut.stop()
        super().stop()

    def accepted(self, connection: socket.socket, address: Any) -> None:
        """Serve a new connection if it fits under the cap, else refuse it at once."""
        if self.open_connections >= self.max_connections and not self.close_oldest_idle():
            self.refused.add()
            with contextlib.suppress(OSError):  # a best effort: never wait for this client
                connection.setblocking(False)
                connection.send(TOO_MANY_CONNECTIONS)
            connection.close()
            return
        stream = GatewayStream(
            connection,
            max_buffer_size=self.max_buffer_size,
            read_chunk_size=self.read_chunk_size,
            idle=self.idle,
            bodies=self.bodies,
            peer=str(address[0]) if isinstance(address, tuple) and address else "a client",
        )
        try:
            self.handle_stream(stream, address)
        except Exception:
            logger.exception("error setting up a connection")
            stream.close()

    def close_oldest_idle(self) -> bool:
        """Close the connection idle longest, if any; return whether one was closed."""
        oldest = self.idle.pop_oldest_idle()
        if oldest is None:
            return False
        self._closed_for_room.add(oldest)
        self.open_connections -= 1
        oldest.close()
        self.closed_idle.add()
        return True

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        """Count the connection as open and idle, then serve HTTP on it."""
        self.open_connections += 1
        self.idle.start_waiting(cast(GatewayStream, stream))
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        """The connection is closed: it no longer counts."""
        stream = cast(HTTP1ServerConnection, server_conn).stream
        self.idle.forget(stream)
        if self.bodies is not None:
            self.bodies.forget(stream)
        if stream in self._closed_for_room:
            self._closed_for_room.discard(stream)
        else:
            self.open_connections -= 1
        super().on_close(server_conn)
