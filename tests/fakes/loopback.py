"""Where every fake listens: a port the kernel picks (or one asked for) on a local address."""

from __future__ import annotations

import socket

from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer

# Tornado's own default; a bench that floods a fake with connections asks for more.
DEFAULT_BACKLOG = 128


def listening_socket(host: str, port: int = 0, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A listening socket on ``host`` (IPv6 when the address has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return bind_sockets(port, host, family=family, backlog=backlog)[0]


def listen(server: TCPServer, host: str, port: int = 0, backlog: int = DEFAULT_BACKLOG) -> int:
    """Make ``server`` accept connections on ``host``; return the port."""
    sock = listening_socket(host, port, backlog)
    server.add_sockets([sock])
    return sock.getsockname()[1]
