"""systemd's notify protocol over a real datagram socket: readiness, watchdog, stopping."""

from __future__ import annotations

import os
import socket

from tornado_imagegate.sdnotify import Notifier

DEADLINE = 30.0


def test_notifier_sends_each_state_as_a_datagram(notify_socket):
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("listening")
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening"
    assert notifier.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1"


def test_notifier_speaks_to_abstract_sockets():
    name = f"imagegate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


def test_notifier_is_silent_without_systemd_and_reads_the_watchdog():
    assert not Notifier({}).enabled and not Notifier({}).ready()
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_seconds == 2.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_seconds is None
