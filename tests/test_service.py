"""Running as a service: systemd's protocol, graceful shutdown, metrics, request ids, logs."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    CLIENT_KEYS,
    LOG_WATCH,
    assert_error,
    call,
    chat_body,
    json_of,
    post_chat,
    register_secret,
    with_env,
)
from fakes import FakeOrigin, png_bytes
from processes import COMMAND, NEUTRAL_CWD, Gateway, clean_env
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornado_imagegate.sdnotify import Notifier
from tornado_imagegate.server import (
    GC_YOUNG_THRESHOLD,
    build_settings,
    event_loop_factory,
    parse_args,
    settle_garbage_collector,
)
from tornado_imagegate.sources import read_credentials

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "imagegate.service"
SD_KEY = "sd-service-key-9191"
register_secret(SD_KEY)
DEADLINE = 30.0


# --- the systemd unit ---


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this interpreter (verify checks it exists)."""
    text = UNIT.read_text()
    text = re.sub(
        r"^ExecStart=\S+",
        f"ExecStart={shutil.which('python3') or '/bin/true'}",
        text,
        flags=re.MULTILINE,
    )
    path = tmp_path / "imagegate.service"
    path.write_text(text)
    return path


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "imagegate.service" not in result.stderr, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_exposure_is_2_or_lower(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_is_a_notify_service_with_a_watchdog_and_credentials():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "DynamicUser=yes",
        "CacheDirectory=imagegate",
        "WatchdogSec=",
        "LoadCredential=AUTHORIZED_API_KEY:",
        "IMAGE_CACHE_DIR=%C/imagegate",
        "PYTHONUNBUFFERED=1",
        "LimitNOFILE=",
    ):
        assert line in text
    # One value sets soft = hard: nothing to raise at start-up, where setrlimit is filtered out.
    limit = re.search(r"^LimitNOFILE=(\d+)$", text, re.MULTILINE)
    assert limit and int(limit.group(1)) >= 65536


# --- the notify protocol over a real datagram socket ---


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(DEADLINE)
    yield sock, path
    sock.close()


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


# --- a real process: readiness, watchdog, a graceful SIGTERM with a stream open ---


class HeldProvider:
    """An SD-shaped provider that answers when the test lets it."""

    def __init__(self) -> None:
        self.images = FakeOrigin()
        self.images.serve("held.png", png_bytes(24, seed=2))
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()
        image_url = self.images.url("held.png")
        fake = self

        class Handler(RequestHandler):
            async def post(self) -> None:
                fake.arrived.set()
                await fake.gate.wait()
                self.finish({"success": True, "data": {"image_url": image_url}})

        self.server = HTTPServer(Application([(r"/.*", Handler)]))
        sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/gen"
        self.server.add_sockets(sockets)

    def close(self) -> None:
        self.gate.set()
        self.server.stop()
        self.images.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.gen_test(timeout=60)
async def test_real_process_notifies_and_stops_gracefully_with_a_stream_open(
    io_loop, notify_socket, tmp_path, http_client
):
    sock, path = notify_socket
    provider = HeldProvider()
    loop = asyncio.get_running_loop()
    env = clean_env(
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="300000",
        AUTHORIZED_API_KEY=CLIENT_KEYS[0],
        SD_API_KEY=SD_KEY,
        SD_API_BASE=provider.url,
        IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS="true",
        SSE_KEEPALIVE_SECONDS="0.1",
        SHUTDOWN_GRACE_SECONDS="20",
    )
    gateway = Gateway(["--port", "0"], env, tmp_path / "stderr.log")
    try:
        base = await loop.run_in_executor(None, gateway.wait_listening)
        assert (await loop.run_in_executor(None, receive, sock)).startswith("READY=1")
        assert await loop.run_in_executor(None, receive, sock) == "WATCHDOG=1"
        assert (await http_client.fetch(base + "/ready")).code == 200

        received: list[bytes] = []
        stream = http_client.fetch(
            base + "/v1/chat/completions",
            method="POST",
            body=json.dumps(chat_body("a boat", model="Z-Image", stream=True)),
            headers={"Authorization": f"Bearer {CLIENT_KEYS[0]}"},
            streaming_callback=received.append,
            request_timeout=DEADLINE,
        )
        await asyncio.wait_for(provider.arrived.wait(), DEADLINE)
        gateway.process.send_signal(signal.SIGTERM)
        states = []
        while "STOPPING=1" not in states:
            states.append(await loop.run_in_executor(None, receive, sock))
        with pytest.raises(OSError):  # it no longer accepts connections
            await loop.run_in_executor(
                None, socket.create_connection, ("127.0.0.1", int(base.rsplit(":", 1)[1])), 2
            )
        assert gateway.process.poll() is None  # still finishing the open stream
        provider.gate.set()
        response = await stream
        assert response.code == 200
        body = b"".join(received).decode()
        assert "![a boat](" in body and body.rstrip().endswith("data: [DONE]")
        code = await loop.run_in_executor(None, gateway.process.wait, DEADLINE)
        assert code == 0
        assert "Traceback" not in gateway.stderr()
    finally:
        gateway.close()
        provider.close()


# --- metrics, readiness, request ids ---


@pytest.mark.gen_test
@with_env({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true"})
async def test_metrics_tell_requests_stages_keys_cache_and_streams(http_client, base_url):
    response = await post_chat(
        http_client,
        base_url,
        chat_body("a vase", seed=1),
    )
    link = json_of(response)["choices"][0]["message"]["content"].split("(")[1].rstrip(")")
    await http_client.fetch(link)
    await call(http_client, base_url, "/v1/models", key=None)
    metrics = await call(http_client, base_url, "/metrics", key=None)
    assert metrics.code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    assert re.search(
        r'imagegate_http_requests_total\{method="POST",route="ChatCompletionsHandler"'
        r',status="200"\} 1\.0',
        text,
    )
    assert 'status="401"' in text
    assert 'imagegate_stage_duration_seconds_count{stage="generate"} 1.0' in text
    assert "imagegate_image_cache_hits_total 1.0" in text
    assert "imagegate_image_cache_bytes " in text
    assert "imagegate_streams_open 0.0" in text
    assert "imagegate_provider_key_failures" in text


@pytest.mark.gen_test
async def test_metrics_through_a_local_proxy_are_refused(http_client, base_url):
    response = await call(
        http_client, base_url, "/metrics", key=None, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert_error(response, 403, "forbidden")


@pytest.mark.gen_test
@with_env({"METRICS_ACCESS": "off"})
async def test_metrics_can_be_turned_off(http_client, base_url):
    assert_error(await call(http_client, base_url, "/metrics", key=None), 404, "path_not_found")


@pytest.mark.gen_test
@with_env({"METRICS_ACCESS": "public"})
async def test_metrics_can_be_public(http_client, base_url):
    response = await call(
        http_client, base_url, "/metrics", key=None, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert response.code == 200


@pytest.mark.gen_test
async def test_readiness_reports_shutdown(http_client, base_url, app):
    ready = await call(http_client, base_url, "/ready", key=None)
    assert ready.code == 200 and json_of(ready)["status"] == "ready"
    app.services.lifecycle.shutting_down = True
    assert (await call(http_client, base_url, "/ready", key=None)).code == 503


@pytest.mark.gen_test
async def test_every_answer_carries_a_request_id_that_the_log_names(http_client, base_url):
    seen = set()
    for path, key in (
        ("/health", None),
        ("/v1/models", None),
        ("/nope", None),
        ("/static/style.css", None),
        ("/v1/models", CLIENT_KEYS[0]),
    ):
        response = await call(http_client, base_url, path, key=key)
        request_id = response.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{16}", request_id)
        seen.add(request_id)
        assert any(f"id={request_id}" in line for line in LOG_WATCH.lines)
    assert len(seen) == 5
    kept = await call(http_client, base_url, "/health", headers={"X-Request-Id": "proxy-id-1234"})
    assert kept.headers["X-Request-Id"] == "proxy-id-1234"
    forged = await call(http_client, base_url, "/health", headers={"X-Request-Id": "a\u00e9 b"})
    assert forged.headers["X-Request-Id"] != "a\u00e9 b"


# --- credentials and logs ---


def test_start_up_objects_are_frozen_and_young_collections_are_rarer():
    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_systemd_credentials_are_read_and_the_environment_wins(tmp_path):
    (tmp_path / "AUTHORIZED_API_KEY").write_text("cred-client-key-1234\n")
    (tmp_path / "FLUX_GEN_API_KEY").write_text("cred-flux-key-5678")
    (tmp_path / "not a variable").write_text("ignored")
    register_secret("cred-client-key-1234", "cred-flux-key-5678")
    values = read_credentials(str(tmp_path))
    assert values == {
        "AUTHORIZED_API_KEY": "cred-client-key-1234",
        "FLUX_GEN_API_KEY": "cred-flux-key-5678",
    }
    result = subprocess.run(
        [*COMMAND, "--check-config"],
        env=clean_env(
            CREDENTIALS_DIRECTORY=str(tmp_path),
            FLUX_GEN_MODEL="flux",
            FLUX_GEN_API_BASE="https://api.example.com/v1/images/generations",
        ),
        cwd=NEUTRAL_CWD,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 client key" in result.stdout and "1 key" in result.stdout
    assert "cred-" not in result.stdout + result.stderr
    (tmp_path / "FLUX_GEN_API_KEY").unlink()
    from_file = build_settings(parse_args([]), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert from_file.client_keys == ("cred-client-key-1234",)
    register_secret("env-wins-key-0000")
    environment = {
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "AUTHORIZED_API_KEY": "env-wins-key-0000",
    }
    assert build_settings(parse_args([]), environment).client_keys == ("env-wins-key-0000",)


@pytest.mark.gen_test(timeout=60)
async def test_a_debug_log_of_real_traffic_holds_no_secret(io_loop, tmp_path, http_client):
    provider = HeldProvider()
    provider.gate.set()
    loop = asyncio.get_running_loop()
    env = clean_env(
        LOG_LEVEL="DEBUG",
        AUTHORIZED_API_KEY=CLIENT_KEYS[1],
        SD_API_KEY=SD_KEY,
        SD_API_BASE=provider.url,
        IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS="true",
    )
    gateway = Gateway(["--port", "0"], env, tmp_path / "stderr.log")
    try:
        base = await loop.run_in_executor(None, gateway.wait_listening)
        headers = {"Authorization": f"Bearer {CLIENT_KEYS[1]}"}
        answer = await http_client.fetch(
            base + "/v1/chat/completions",
            method="POST",
            headers=headers,
            body=json.dumps(chat_body("a lamp", model="Z-Image")),
        )
        content = json.loads(answer.body)["choices"][0]["message"]["content"]
        link = content.split("(", 1)[1].rstrip(")")
        await http_client.fetch(link)
        await http_client.fetch(base + f"/v1/models?key={CLIENT_KEYS[1]}", raise_error=False)
        gateway.process.send_signal(signal.SIGTERM)
        await loop.run_in_executor(None, gateway.process.wait, DEADLINE)
        log = gateway.stderr()
        assert " DEBUG " in log  # the log really was at DEBUG
        assert "200 POST /v1/chat/completions" in log
        query = link.split("?", 1)[1]
        for secret in (CLIENT_KEYS[1], SD_KEY, query, *query.split("&")):
            assert secret not in log
    finally:
        gateway.close()
        provider.close()


@pytest.mark.gen_test
async def test_a_client_leaving_mid_body_is_no_longer_in_flight(
    http_client, base_url, app, http_port
):
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", http_port))
    await stream.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + CLIENT_KEYS[0].encode() + b"\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    lifecycle = app.services.lifecycle
    for _ in range(200):
        if lifecycle.inflight:
            break
        await asyncio.sleep(0.01)
    assert lifecycle.inflight == 1
    stream.close()
    assert await lifecycle.drain(5)


def test_without_uvloop_the_gateway_runs_on_asyncio(monkeypatch):
    assert event_loop_factory("asyncio") == ("asyncio", None)
    assert event_loop_factory("uvloop")[0].startswith("uvloop ")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop_factory("uvloop") == ("asyncio (uvloop is not installed)", None)
