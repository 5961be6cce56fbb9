"""No log line of any logger, the HTTP server's included, carries a secret or a signed link."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from urllib.parse import urlencode

import pytest
from conftest import CLIENT_KEYS, LOG_WATCH, PROXY_SECRET, chat_body, register_secret
from processes import Gateway, clean_env

from tornado_imagegate.images.links import LinkSigner, derive_secret
from tornado_imagegate.logsafe import REDACTED, SecretFilter

CLIENT_KEY = "sk-logtest-client-0a1b2c3d4e"
PROVIDER_KEY = "sf-logtest-provider-5f6a7b8c"
LLM_KEY = "llm-logtest-9d8e7f6a5b"
LINK_SECRET = "logtest-link-secret-3c2b1a09"
PROXY_PASSWORD = "proxy-pass-77e1d2c3"
SECRETS = (CLIENT_KEY, PROVIDER_KEY, LLM_KEY, LINK_SECRET, PROXY_PASSWORD)
register_secret(*SECRETS)
SD_KEY = "sd-logtest-key-9191"
register_secret(SD_KEY)
DEADLINE = 30.0


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes to the gateway and read what it answers until it closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


@pytest.fixture
def gateway(tmp_path):
    """A real gateway at DEBUG, configured with a secret of every kind."""
    env = clean_env(
        AUTHORIZED_API_KEY=CLIENT_KEY,
        FLUX_GEN_MODEL="flux-test",
        FLUX_GEN_API_BASE="http://127.0.0.1:9/v1/images/generations",
        FLUX_GEN_API_KEY=PROVIDER_KEY,
        OPENAI_API_BASE="http://127.0.0.1:9/v1",
        OPENAI_API_KEY=LLM_KEY,
        OPENAI_MODEL="gpt-test",
        IMAGE_PROXY_SECRET=LINK_SECRET,
        UPSTREAM_PROXY=f"http://gateway:{PROXY_PASSWORD}@127.0.0.1:9",
        LOG_LEVEL="DEBUG",
    )
    process = Gateway(["--port", "0"], env, tmp_path / "stderr.log")
    try:
        yield process, int(process.wait_listening().rsplit(":", 1)[1])
    finally:
        process.close()


def test_malformed_requests_and_failing_links_leave_no_secret_in_the_log(gateway):
    process, port = gateway
    signer = LinkSigner(derive_secret(LINK_SECRET, ()))
    link_query = urlencode(signer.query_for_url("http://127.0.0.1:9/private.png"))
    signature = link_query.rsplit("s=", 1)[1]
    register_secret(link_query, signature)
    answers = []
    for secret in SECRETS:
        for request in (
            # A control character after a valid key: Tornado's "Malformed HTTP message" line.
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\x01\r\n\r\n",
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Api-Key {secret}\r\n\r\n",
            f"GET /{secret} HTTP/1.1\r\nHost: x\r\nBroken\x00: y\r\n\r\n",
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n"
            "Connection: close\r\n\r\n",
        ):
            answers.append(raw_exchange(port, request.encode("latin-1")))
    # Signed links: malformed around them, and refused by the address filter (a logged 502).
    answers.append(
        raw_exchange(port, f"GET /image-proxy?{link_query} HTTP/1.1\r\nX\x01\r\n\r\n".encode())
    )
    refused = f"GET /image-proxy?{link_query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answers.append(raw_exchange(port, refused.encode()))
    assert answers[-1].startswith(b"HTTP/1.1 502"), answers[-1][:200]
    process.wait_for_stderr(r"502 GET /image-proxy")  # the last request's log line
    log = process.stderr()
    assert "Malformed HTTP" in log or "bad_request" in log or "400" in log, log[-2000:]
    for secret in (*SECRETS, signature, link_query):
        assert secret not in log, f"{secret!r} is in the log"
    for answer in answers:
        for secret in (PROVIDER_KEY, LLM_KEY, LINK_SECRET, PROXY_PASSWORD, signature):
            assert secret.encode() not in answer


@pytest.mark.gen_test
async def test_an_uncaught_error_on_a_signed_link_logs_the_path_only(http_client, base_url, app):
    store = app.services.store
    query = urlencode(store.signer.query_for_url("https://images.example/cat.png"))
    register_secret(query, query.rsplit("s=", 1)[1])

    def crash(_query):
        raise RuntimeError("a bug while serving a link")

    store.find = crash  # force the unexpected: the log line is what is tested
    before = len(LOG_WATCH.lines)
    response = await http_client.fetch(f"{base_url}/image-proxy?{query}", raise_error=False)
    assert response.code == 500 and b"Traceback" not in response.body
    lines = LOG_WATCH.lines[before:]
    assert any("Uncaught exception GET /image-proxy (127.0.0.1)" in line for line in lines), lines
    assert not [line for line in lines if "s=" in line or "u=" in line]


@pytest.mark.gen_test(timeout=60)
async def test_a_debug_log_of_real_traffic_holds_no_secret(io_loop, tmp_path, http_client, sd):
    loop = asyncio.get_running_loop()
    env = clean_env(
        LOG_LEVEL="DEBUG",
        AUTHORIZED_API_KEY=CLIENT_KEYS[1],
        SD_API_KEY=SD_KEY,
        SD_API_BASE=sd.url("gen"),
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


def test_the_filter_hides_secrets_in_messages_arguments_and_tracebacks():
    hidden = SecretFilter([CLIENT_KEYS[0], PROXY_SECRET, "short"])
    secret_with_quote = "it's-a-secret-key-42"
    hidden.add([secret_with_quote])

    def record(msg, *args, exc_info=None):
        return logging.LogRecord("tornado.general", logging.INFO, __file__, 1, msg, args, exc_info)

    def shown(rec):
        hidden.filter(rec)
        return logging.Formatter("%(message)s").format(rec)

    assert CLIENT_KEYS[0] not in shown(record("Malformed: %r", f"Bearer {CLIENT_KEYS[0]}\x01"))
    assert secret_with_quote not in shown(record("got %r", secret_with_quote))
    assert "it\\'s-a-secret-key-42" not in shown(record("got %r", secret_with_quote))
    line = shown(record("GET /image-proxy?u=aHR0cA&e=1&s=c2lnbmF0dXJl (1.2.3.4)"))
    assert "c2lnbmF0dXJl" not in line and "aHR0cA" not in line and REDACTED in line
    assert "pw" not in shown(record("proxy http://user:pw@proxy.example:3128 failed"))
    assert "tok123" not in shown(record("headers: 'Authorization: Bearer tok123'"))
    assert shown(record("a short word stays")) == "a short word stays"
    try:
        raise ValueError(f"bad key {PROXY_SECRET}")
    except ValueError:
        import sys

        text = shown(record("failed", exc_info=sys.exc_info()))
    assert PROXY_SECRET not in text and "ValueError" in text and REDACTED in text


def test_the_filter_redacts_each_pattern_wherever_it_can_match_and_leaves_access_lines_alone():
    hidden = SecretFilter([PROXY_SECRET])

    def shown(msg, *args):
        rec = logging.LogRecord("tornado.access", logging.INFO, __file__, 1, msg, args, None)
        hidden.filter(rec)
        return logging.Formatter("%(message)s").format(rec)

    access = ("%d %s %s %.1fms id=%s", 200, "GET", "/image-proxy", 1.25, "0a1b2c3d00000001")
    assert shown(*access) == "200 GET /image-proxy 1.2ms id=0a1b2c3d00000001"
    assert shown("%d %s %s", 404, "GET", f"/v1/{PROXY_SECRET}") == f"404 GET /v1/{REDACTED}"
    for line, held in [
        ("Cookie: sessionid=cookie-value-1", "cookie-value-1"),
        ("PROXY-AUTHORIZATION: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("sent x-api-key=key-value-2 upstream", "key-value-2"),
        ("Api-Key : key-value-3", "key-value-3"),
        ("ünïcode line, COOKIE: cookie-value-4", "cookie-value-4"),
        ("fetched https://cdn.example/a.png?id=capability-5", "capability-5"),
        ("next page &s=capability-6", "capability-6"),
        ("link /image-proxy?e=1&u=capability-7", "capability-7"),
        ("proxy socks5://user:password-8@proxy.example", "password-8"),
    ]:
        assert held not in shown("%s", line), line
        assert REDACTED in shown("%s", line), line
