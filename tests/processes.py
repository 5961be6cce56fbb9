"""Gateway subprocesses for tests: a clean environment, the installed command, its output."""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tornado_imagegate.typos import throwaway_environment

logger = logging.getLogger(__name__)

COMMAND = [sys.executable, "-m", "tornado_imagegate"]
STOP_DEADLINE = 10.0

# Not the checkout: `python -m` puts the working directory first on sys.path, and the command
# under test must be the installed package.
NEUTRAL_CWD = Path(__file__).resolve().parent


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the gateway's variables or near misses, and ``extra``.

    Unless ``extra`` names one, there is no data directory: nothing is written to the home
    directory, and nothing is kept from one run to the next.
    """
    env = throwaway_environment(os.environ)
    env.update(extra)
    return env


class Gateway:
    """A gateway subprocess whose stdout and stderr are read line by line by background threads.

    Stdout lines are read in order with ``read_until``; stderr goes to ``stderr_path`` as it
    comes, and ``wait_for_stderr`` waits for a line there.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        stderr_path: Path,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_bytes = b""
        self._stderr_closed = False
        self._stderr_changed = threading.Condition()
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            env=env,
            cwd=NEUTRAL_CWD,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        assert self.process.stderr is not None
        os.set_blocking(self.process.stderr.fileno(), False)
        self._stderr_copy = open(stderr_path, "wb")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.stderr_reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while True:
            try:
                select.select([self.process.stderr], [], [])
            except (OSError, ValueError):  # closed by close() (a child kept the pipe open)
                return
            with self._stderr_changed:
                open_still = self._drain_stderr()
                self._stderr_changed.notify_all()
            if not open_still:
                return

    def _drain_stderr(self) -> bool:
        """Move what the pipe holds now into the text and the file; False once it is closed.

        Called with ``_stderr_changed`` held, by the reader thread and by every look at stderr,
        so that a look sees everything the process wrote before it (before an answer, say).
        """
        assert self.process.stderr is not None
        while not (self._stderr_closed or self.process.stderr.closed):
            try:
                chunk = os.read(self.process.stderr.fileno(), 65536)
            except BlockingIOError:
                return True
            if not chunk:
                self._stderr_closed = True
                self._stderr_copy.close()
                break
            self._stderr_bytes += chunk
            self._stderr_copy.write(chunk)
            self._stderr_copy.flush()
        return False

    def wait_for_stderr(self, pattern: str, within: float = 30.0) -> list[re.Match[str]]:
        """Every match of ``pattern`` in stderr, once there is one; fail after ``within``
        seconds, or when stderr closes without one."""
        deadline = time.monotonic() + within
        with self._stderr_changed:
            while not (matches := list(re.finditer(pattern, self._stderr_text()))):
                remaining = deadline - time.monotonic()
                if self._stderr_closed or remaining <= 0:
                    pytest.fail(f"no {pattern!r} in stderr: {self._stderr_text()[-3000:]}")
                self._stderr_changed.wait(remaining)
        return matches

    def _stderr_text(self) -> str:
        return self._stderr_bytes.decode("utf-8", errors="replace")

    def read_until(self, pattern: str, deadline: float) -> tuple[re.Match[str], list[str]]:
        """Read stdout lines until one matches ``pattern``; fail at ``deadline`` or at EOF."""
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line matching {pattern!r} in time; stdout so far: {seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(
                    f"stdout closed before {pattern!r} (exit {self.process.poll()}); "
                    f"stdout: {seen}; stderr: {self.stderr()}"
                )
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match, seen

    def wait_listening(self, within: float = 30.0) -> str:
        """Wait for the start-up line; return the server's base URL."""
        match, _ = self.read_until(r"listening on 127\.0\.0\.1:(\d+)", time.monotonic() + within)
        return f"http://127.0.0.1:{match.group(1)}"

    def stderr(self) -> str:
        """Everything the process has written to stderr so far."""
        with self._stderr_changed:
            self._drain_stderr()
            return self._stderr_text()

    def close(self) -> None:
        """Make sure the process is gone and every pipe closed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_DEADLINE)
        self.reader.join(timeout=STOP_DEADLINE)
        self.stderr_reader.join(timeout=STOP_DEADLINE)
        with self._stderr_changed:
            self._drain_stderr()
            self._stderr_copy.close()
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
        for line in self.stderr().splitlines():
            logger.debug("imagegate stderr: %s", line)
