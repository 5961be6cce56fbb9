"""A real redis-server and a real nginx for tests, each on a free loopback port in a temporary
directory, always stopped (Debian's packages; .ci/run installs them, so CI never skips).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_DEADLINE = 10.0
STOP_DEADLINE = 10.0
REDIS_SERVER = shutil.which("redis-server") or ""
NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/sbin/nginx") if Path(path).exists()), ""
)


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_accepting(port: int, process: subprocess.Popen, log: Path) -> None:
    """Wait until something accepts connections on ``port``; fail if ``process`` exits first."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                pytest.fail(f"{process.args[0]} did not start (exit {process.poll()}): {text}")
            time.sleep(0.02)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=STOP_DEADLINE)


class RedisServer:
    """redis-server on 127.0.0.1, its data in ``directory``; ``stop`` and ``start`` again on the
    same port (``save``: keep what it holds across the restart, as a persistent Redis does)."""

    def __init__(self, directory: Path) -> None:
        if not REDIS_SERVER:
            pytest.skip("redis-server is not installed (Debian package redis-server)")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        """The ``REDIS_URL`` of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (it loads what a saving stop wrote)."""
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_accepting(self.port, self.process, log)

    def stop(self, save: bool = False) -> None:
        """Stop it; with ``save`` its data is written first and comes back at the next start."""
        assert self.process is not None
        if save and self.process.poll() is None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"SHUTDOWN SAVE\r\n")
                sock.recv(100)  # the connection closes when it has saved and stopped
        stop(self.process)


class Nginx:
    """nginx balancing a loopback port over ``backends`` (round robin), as README shows."""

    def __init__(self, directory: Path, backends: list[str]) -> None:
        if not NGINX:
            pytest.skip("nginx is not installed (Debian package nginx)")
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server {backend} max_fails=0;" for backend in backends)
        temporary = "\n".join(
            f"    {kind}_temp_path {directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = directory / "nginx.conf"
        config.write_text(
            f"""daemon off;
master_process off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temporary}
    upstream gateways {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_next_upstream error timeout;
        }}
    }}
}}
""",
            encoding="utf-8",
        )
        log = directory / "error.log"
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(config), "-e", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_accepting(self.port, self.process, log)

    @property
    def url(self) -> str:
        """The balanced base URL."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop it."""
        stop(self.process)
