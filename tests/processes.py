"""Gateway subprocesses for tests: a clean environment, the installed command, its output."""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tornado_imagegate.typos import without_gateway_variables

logger = logging.getLogger(__name__)

COMMAND = [sys.executable, "-m", "tornado_imagegate"]
STOP_DEADLINE = 10.0

# Not the checkout: `python -m` puts the working directory first on sys.path, and the command
# under test must be the installed package.
NEUTRAL_CWD = Path(__file__).resolve().parent


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the gateway's variables or near misses, and ``extra``."""
    env = without_gateway_variables(os.environ)
    env.update(extra)
    return env


class Gateway:
    """A gateway subprocess whose stdout is read line by line by a background thread."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        stderr_path: Path,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        with open(stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [*COMMAND, *args],
                env=env,
                cwd=NEUTRAL_CWD,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                preexec_fn=preexec_fn,
            )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

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
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        """Make sure the process is gone and every pipe closed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_DEADLINE)
        self.reader.join(timeout=STOP_DEADLINE)
        if self.process.stdout is not None:
            self.process.stdout.close()
        for line in self.stderr().splitlines():
            logger.debug("imagegate stderr: %s", line)
