"""--workers N: real processes sharing one port, READY once all listen, the watchdog, a dead
worker replaced, SIGTERM draining every worker, /metrics summed, images served by either."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import CLIENT_KEYS, PROXY_SECRET, chat_body, register_secret
from fakes import PNG_SIGNATURE
from processes import COMMAND, NEUTRAL_CWD, Gateway, clean_env

from tornado_imagegate.config import ConfigError, load_settings
from tornado_imagegate.listener import connection_cap

DEADLINE = 30.0
# Connections a test opens at most to find each worker: the kernel hands each new connection
# to whichever worker accepts first, so a few are usually enough.
MAX_PROBES = 400
SD_KEY = "sd-workers-key-4417"
register_secret(SD_KEY)


# --- helpers ---


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (its workers)."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (command) state ppid ...": the command may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.add(int(entry))
    return children


def start(tmp_path: Path, *args: str, **env: str) -> tuple[Gateway, int]:
    """``imagegate --port 0`` with these flags and variables; return it and its port."""
    gateway = Gateway(["--port", "0", *args], clean_env(**env), tmp_path / "stderr.log")
    base = gateway.wait_listening()
    return gateway, int(base.rsplit(":", 1)[1])


class Client:
    """One keep-alive connection to the gateway, with a request id on each request."""

    serial = 0

    def __init__(self, port: int, key: str | None = CLIENT_KEYS[0]) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
        self.key = key

    def request(
        self, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes, http.client.HTTPResponse]:
        """Send one request; return its status, its request id, the body and the response."""
        Client.serial += 1
        request_id = f"workers-test-{os.getpid()}-{Client.serial:06d}"
        all_headers = {"X-Request-Id": request_id, **(headers or {})}
        if self.key:
            all_headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        self.connection.request("POST" if data else "GET", path, data, all_headers)
        response = self.connection.getresponse()
        return response.status, request_id, response.read(), response

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def answered_by(gateway: Gateway, request_id: str) -> int:
    """The pid of the worker whose access log line holds ``request_id``."""
    pattern = rf"\[(\d+)\] tornado\.access: \d+ \w+ \S+ \S+ id={re.escape(request_id)}\b"
    return int(gateway.wait_for_stderr(pattern)[0].group(1))


def clients_on_each_worker(
    gateway: Gateway, port: int, workers: set[int], key: str | None = CLIENT_KEYS[0]
) -> dict[int, Client]:
    """A keep-alive connection served by each of ``workers``, each found by a request that
    needs the key (/v1/models)."""
    found: dict[int, Client] = {}
    for _ in range(MAX_PROBES):
        client = Client(port, key)
        status, request_id, _, _ = client.request("/v1/models")
        assert status == 200
        pid = answered_by(gateway, request_id)
        assert pid in workers, f"answered by {pid}, not one of the workers {workers}"
        if pid in found:
            client.close()
        else:
            found[pid] = client
        if len(found) == len(workers):
            return found
    pytest.fail(f"{MAX_PROBES} connections reached only workers {set(found)} of {workers}")


def metric(text: str, sample: str) -> float:
    """The value of one sample (a name with its labels, as printed) in Prometheus text."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {sample} in {text}"
    return float(match.group(1))


def path_of(url: str) -> str:
    """The path and query of a URL."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def receive_until(sock: socket.socket, prefix: str) -> list[str]:
    """Datagrams until one starting with ``prefix``; all of them, that one last."""
    states = [receive(sock)]
    while not states[-1].startswith(prefix):
        states.append(receive(sock))
    return states


def link_of(answer: bytes) -> str:
    """The image link of a non-streamed chat completion."""
    content = json.loads(answer)["choices"][0]["message"]["content"]
    return content.split("](", 1)[1].split(")", 1)[0]


# --- configuration ---


def test_workers_auto_is_one_per_usable_cpu_and_bad_counts_name_the_variable():
    assert load_settings({}).workers == 1
    assert load_settings({"IMAGEGATE_WORKERS": "auto"}).workers == len(os.sched_getaffinity(0))
    assert load_settings({"IMAGEGATE_WORKERS": "3"}).workers == 3
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(ConfigError) as raised:
            load_settings({"IMAGEGATE_WORKERS": bad})
        assert raised.value.problems == [
            f"IMAGEGATE_WORKERS: must be a whole number, 1 or more, or auto (got {bad!r})"
        ]


def test_a_bad_workers_flag_stops_the_command_naming_the_flag():
    result = subprocess.run(
        [*COMMAND, "--workers", "0", "--port", "0"],
        env=clean_env(),
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers (IMAGEGATE_WORKERS): must be a whole number, 1 or more, or auto" in (
        result.stderr
    )


def test_a_configured_connection_cap_is_shared_between_workers():
    assert connection_cap(1000, 100, descriptor_limit=65536, workers=1) == 1000
    assert connection_cap(1000, 100, descriptor_limit=65536, workers=2) == 500
    assert connection_cap(1001, 100, descriptor_limit=65536, workers=2) == 501
    # The descriptor limit is each process's own: the default cap is per worker.
    assert connection_cap(0, 100, descriptor_limit=65536, workers=4) == connection_cap(
        0, 100, descriptor_limit=65536
    )


# --- real processes ---


def test_two_workers_listen_before_ready_and_share_the_watchdog_the_key_and_the_metrics(
    tmp_path, notify_socket
):
    sock, path = notify_socket
    gateway = Gateway(
        ["--port", "0", "--workers", "2"],
        clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000"),
        tmp_path / "stderr.log",
    )
    clients: dict[int, Client] = {}
    try:
        receive_until(sock, "READY=1")
        # Both workers said they listen before the supervisor told systemd.
        accepting = gateway.wait_for_stderr(r"\[(\d+)\] tornado_imagegate\.server: accepting")
        workers = child_pids(gateway.process.pid)
        assert len(workers) == 2
        assert {int(match.group(1)) for match in accepting} == workers
        for _ in range(3):
            assert receive_until(sock, "WATCHDOG=1")[-1] == "WATCHDOG=1"

        # The quick start: one generated key, printed once, that every worker accepts.
        port = int(gateway.wait_listening().rsplit(":", 1)[1])
        match, _ = gateway.read_until(r"^\s+(sk-imagegate-\S+)$", time.monotonic() + DEADLINE)
        key = match.group(1)
        register_secret(key)
        clients = clients_on_each_worker(gateway, port, workers, key)
        first, second = clients.values()

        # One signing secret for all: the same image made by either worker has the same link
        # (so they also keep one file of it on a shared disk tier).
        links = []
        for client in (first, second):
            status, _, answer, _ = client.request(
                "/v1/chat/completions", chat_body("a kite", seed=7)
            )
            assert status == 200
            links.append(path_of(link_of(answer)))
            # /metrics below: each worker fetches the image it made, one cache hit each.
            assert client.request(links[-1])[0] == 200
        assert links[0] == links[1]

        # /metrics sums both workers, whichever answers the scrape: requests, and figures read
        # at scrape time.
        for client, count in ((first, 3), (second, 2)):
            for _ in range(count):
                assert client.request("/health")[0] == 200
            # Its answer comes once the worker has counted every earlier request.
            assert client.request("/v1/models")[0] == 200
        health = '{method="GET",route="HealthHandler",status="200"}'
        for client in clients.values():
            status, _, text, _ = client.request("/metrics")
            assert status == 200
            assert metric(text.decode(), "imagegate_http_requests_total" + health) == 5.0
            assert metric(text.decode(), "imagegate_image_cache_hits_total") == 2.0
    finally:
        for client in clients.values():
            client.close()
        gateway.close()


def test_two_workers_serve_each_others_images(tmp_path):
    gateway, port = start(
        tmp_path,
        "--workers",
        "2",
        AUTHORIZED_API_KEY=CLIENT_KEYS[0],
        IMAGE_PROXY_SECRET=PROXY_SECRET,
        IMAGE_CACHE_DIR=str(tmp_path / "images"),
    )
    clients: dict[int, Client] = {}
    try:
        clients = clients_on_each_worker(gateway, port, child_pids(gateway.process.pid))
        first, second = clients.values()
        for maker, other in ((first, second), (second, first)):
            status, _, answer, _ = maker.request("/v1/chat/completions", chat_body("a lamp"))
            assert status == 200
            link = path_of(link_of(answer))
            status, _, made, _ = maker.request(link)
            assert status == 200 and made.startswith(PNG_SIGNATURE)
            status, _, served, _ = other.request(link)
            assert status == 200, served
            assert served == made
    finally:
        for client in clients.values():
            client.close()
        gateway.close()


def test_a_killed_worker_is_logged_and_replaced_and_the_gateway_keeps_answering(tmp_path):
    gateway, port = start(tmp_path, "--workers", "2", AUTHORIZED_API_KEY=CLIENT_KEYS[0])
    clients: dict[int, Client] = {}
    try:
        victim, survivor = sorted(child_pids(gateway.process.pid))
        os.kill(victim, signal.SIGKILL)
        death = gateway.wait_for_stderr(
            rf"worker (\d) \(pid {victim}\) was killed by signal SIGKILL after [0-9.]+ s; "
            "starting a new one"
        )[0]
        slot = death.group(1)
        meanwhile = Client(port)  # the survivor answers
        assert meanwhile.request("/v1/models")[0] == 200
        meanwhile.close()
        started = gateway.wait_for_stderr(rf"worker {slot} started \(pid (?!{victim}\))(\d+)\)")
        replacement = int(started[0].group(1))
        assert replacement not in (victim, survivor)
        gateway.wait_for_stderr(rf"worker {slot} \(pid {replacement}\) is listening")
        assert child_pids(gateway.process.pid) == {survivor, replacement}
        clients = clients_on_each_worker(gateway, port, {survivor, replacement})
    finally:
        for client in clients.values():
            client.close()
        gateway.close()


def test_workers_dying_at_start_are_replaced_ever_more_slowly_and_sigterm_still_stops(
    tmp_path,
):
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("the disk tier cannot live here")
    gateway = Gateway(
        ["--port", "0", "--workers", "2"],
        clean_env(IMAGE_CACHE_DIR=str(not_a_directory)),
        tmp_path / "stderr.log",
    )
    try:
        pauses = gateway.wait_for_stderr(
            r"worker 1 \(pid \d+\) exited with status 1 after [0-9.]+ s; "
            r"starting a new one in ([0-9.]+) s"
        )
        while len(pauses) < 3:
            pauses = gateway.wait_for_stderr(
                r"worker 1 \(pid \d+\) exited with status 1 after [0-9.]+ s; "
                r"starting a new one in ([0-9.]+) s"
            )
        assert [float(match.group(1)) for match in pauses[:3]] == [0.5, 1.0, 2.0]
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(DEADLINE) == 0
    finally:
        gateway.close()


@pytest.mark.gen_test(timeout=90)
async def test_sigterm_drains_a_request_in_flight_in_every_worker_then_exits_0(
    tmp_path, notify_socket, sd
):
    sock, path = notify_socket
    sd.gate.clear()  # the provider answers when the test lets it
    loop = asyncio.get_running_loop()

    def blocking(function, *args):
        return loop.run_in_executor(None, function, *args)

    gateway = Gateway(
        ["--port", "0", "--workers", "2"],
        clean_env(
            NOTIFY_SOCKET=path,
            AUTHORIZED_API_KEY=CLIENT_KEYS[0],
            SD_API_KEY=SD_KEY,
            SD_API_BASE=sd.url("gen"),
            IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS="true",
            SHUTDOWN_GRACE_SECONDS="20",
        ),
        tmp_path / "stderr.log",
    )
    clients: dict[int, Client] = {}
    try:
        assert (await blocking(receive_until, sock, "READY=1"))[-1].startswith("READY=1")
        port = int((await blocking(gateway.wait_listening)).rsplit(":", 1)[1])
        workers = child_pids(gateway.process.pid)
        clients = await blocking(clients_on_each_worker, gateway, port, workers)
        answers = [
            blocking(client.request, "/v1/chat/completions", chat_body("a bell", model="Z-Image"))
            for client in clients.values()
        ]
        await sd.wait_requests(2, within=DEADLINE)  # one generation in flight in each worker

        gateway.process.send_signal(signal.SIGTERM)
        states = await blocking(receive_until, sock, "STOPPING=1")
        with pytest.raises(OSError):  # no worker accepts connections any more
            await blocking(socket.create_connection, ("127.0.0.1", port), 2)
        assert gateway.process.poll() is None and child_pids(gateway.process.pid) == workers
        sd.gate.set()
        for answer in answers:
            status, _, body, _ = await answer
            assert (
                status == 200
                and "![a bell](" in json.loads(body)["choices"][0]["message"]["content"]
            )
        assert await blocking(gateway.process.wait, DEADLINE) == 0
        sock.setblocking(False)
        while True:
            try:
                states.append(receive(sock))
            except BlockingIOError:
                break
        assert states.count("STOPPING=1") == 1
        stderr = gateway.stderr()
        for pid in workers:
            assert re.search(rf"worker \d \(pid {pid}\) exited with status 0", stderr)
        assert "Traceback" not in stderr
    finally:
        for client in clients.values():
            client.close()
        gateway.close()


def test_a_wedged_worker_stops_the_watchdog_pings_until_it_answers_again(tmp_path, notify_socket):
    sock, path = notify_socket
    gateway = Gateway(
        ["--port", "0", "--workers", "2"],
        clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000"),
        tmp_path / "stderr.log",
    )
    wedged = 0
    try:
        receive_until(sock, "READY=1")
        receive_until(sock, "WATCHDOG=1")
        wedged = min(child_pids(gateway.process.pid))
        os.kill(wedged, signal.SIGSTOP)  # its event loop no longer runs
        gateway.wait_for_stderr(rf"\(pid {wedged}\) has not answered for [0-9.]+ s")
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # pings sent before the supervisor noticed
                receive(sock)
        sock.settimeout(1.0)  # over twice the ping interval
        with pytest.raises(TimeoutError):
            receive(sock)
        os.kill(wedged, signal.SIGCONT)
        wedged = 0
        sock.settimeout(DEADLINE)
        assert receive_until(sock, "WATCHDOG=1")[-1] == "WATCHDOG=1"
    finally:
        if wedged:
            os.kill(wedged, signal.SIGCONT)
        gateway.close()
