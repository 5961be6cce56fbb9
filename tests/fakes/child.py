"""Fakes (or any server) in a child process that a benchmark drives over stdin and stdout.

The child writes JSON lines to stdout (``emit``): first its addresses, then one answer per
command. It reads one command a line from stdin and stops when stdin closes, so it never
outlives the driver, even one that died.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

Command = Callable[[], dict[str, Any]]


def emit(message: dict[str, Any]) -> None:
    """Send one JSON line to the driver."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_until_stdin_closes(
    commands: dict[str, Command], stop_on_signals: bool = False
) -> None:
    """Answer the driver's one-line commands; return when the driver closes stdin (or dies).

    ``stop_on_signals``: SIGTERM and SIGINT end it too.
    """
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    pending = b""
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        nonlocal pending
        chunk = os.read(fd, 4096)
        if not chunk:
            loop.remove_reader(fd)
            closed.set()
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command = commands.get(line.decode().strip())
            emit(command() if command else {"error": f"unknown command {line!r}"})

    loop.add_reader(fd, on_readable)
    if stop_on_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, closed.set)
    await closed.wait()
