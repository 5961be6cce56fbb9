"""Graceful shutdown: a real process stops on SIGTERM after its open streams, readiness turns
503, and a request counts as in flight until it ends or its client leaves."""

from __future__ import annotations

import asyncio
import json
import signal
import socket

import pytest
from conftest import CLIENT_KEYS, Calls, call, chat_body, json_of, register_secret
from processes import Gateway, clean_env
from tornado.iostream import IOStream

SD_KEY = "sd-shutdown-key-9191"
register_secret(SD_KEY)
DEADLINE = 30.0


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


@pytest.mark.gen_test(timeout=60)
async def test_real_process_notifies_and_stops_gracefully_with_a_stream_open(
    io_loop, notify_socket, tmp_path, http_client, sd
):
    sock, path = notify_socket
    sd.gate.clear()  # the provider answers when the test lets it
    loop = asyncio.get_running_loop()
    env = clean_env(
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="300000",
        AUTHORIZED_API_KEY=CLIENT_KEYS[0],
        SD_API_KEY=SD_KEY,
        SD_API_BASE=sd.url("gen"),
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
        await sd.wait_requests(1, within=DEADLINE)
        gateway.process.send_signal(signal.SIGTERM)
        states = []
        while "STOPPING=1" not in states:
            states.append(await loop.run_in_executor(None, receive, sock))
        with pytest.raises(OSError):  # it no longer accepts connections
            await loop.run_in_executor(
                None, socket.create_connection, ("127.0.0.1", int(base.rsplit(":", 1)[1])), 2
            )
        assert gateway.process.poll() is None  # still finishing the open stream
        sd.gate.set()
        response = await stream
        assert response.code == 200
        body = b"".join(received).decode()
        assert "![a boat](" in body and body.rstrip().endswith("data: [DONE]")
        code = await loop.run_in_executor(None, gateway.process.wait, DEADLINE)
        assert code == 0
        assert "Traceback" not in gateway.stderr()
    finally:
        gateway.close()


@pytest.mark.gen_test
async def test_readiness_reports_shutdown(http_client, base_url, app):
    ready = await call(http_client, base_url, "/ready", key=None)
    assert ready.code == 200 and json_of(ready)["status"] == "ready"
    app.services.lifecycle.shutting_down = True
    assert (await call(http_client, base_url, "/ready", key=None)).code == 503


@pytest.mark.gen_test
async def test_a_client_leaving_mid_body_is_no_longer_in_flight(
    http_client, base_url, app, http_port
):
    stream = IOStream(socket.socket())
    lifecycle = app.services.lifecycle
    began = Calls(lifecycle, "begin")
    await stream.connect(("127.0.0.1", http_port))
    await stream.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + CLIENT_KEYS[0].encode() + b"\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    await began.reach(1)  # the gateway has the headers: the request is in flight
    assert lifecycle.inflight == 1
    stream.close()
    assert await lifecycle.drain(5)
