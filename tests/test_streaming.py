"""Streaming chat completions, as the real clients read them, against a provider the test holds."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import pytest
from conftest import CLIENT_KEYS, chat_body, register_secret
from fakes import FakeSD
from tornado.iostream import IOStream

SD_KEY = "sd-stream-key-4242"
register_secret(SD_KEY)
TIMEOUT = 20.0


@pytest.fixture
def sd(sd):
    """The fake SD provider, answering only once the test opens its gate."""
    sd.gate.clear()
    return sd


@pytest.fixture
def gateway_env(sd, request):
    env = {
        "SD_API_KEY": SD_KEY,
        "SD_API_BASE": sd.url("generate"),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "SSE_KEEPALIVE_SECONDS": "0.05",
        "IMAGE_GEN_TIMEOUT": "30",
    }
    env.update(getattr(request, "param", {}))
    return env


class Received(list[bytes]):
    """The chunks of a streamed answer, as they arrive; a test can wait for what it expects."""

    def __init__(self) -> None:
        super().__init__()
        self._arrival = asyncio.Event()

    def append(self, chunk: bytes) -> None:
        """Keep a chunk (the client's streaming callback)."""
        super().append(chunk)
        self._arrival.set()

    async def until(self, condition: Callable[[bytes], bool], what: str) -> None:
        """Wait for chunks that meet ``condition`` (a guard against hanging, not a timing
        assertion)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition(b"".join(self)):
                    self._arrival.clear()
                    await self._arrival.wait()
        except TimeoutError:
            pytest.fail(f"never happened: {what}")


def events(raw: bytes) -> list[str]:
    """The SSE blocks of a stream, comments included."""
    return [block for block in raw.decode().split("\n\n") if block]


def data_of(raw: bytes) -> list:
    """The decoded ``data:`` payloads of a stream, in order (``[DONE]`` as a string)."""
    payloads = []
    for block in events(raw):
        if block.startswith("data: "):
            text = block[len("data: ") :]
            payloads.append(text if text == "[DONE]" else json.loads(text))
    return payloads


def start_stream(http_client, base_url, body, received: list[bytes], heads: list[str]):
    """Begin a streaming request; chunks and header lines collect as they arrive."""
    return http_client.fetch(
        base_url + "/v1/chat/completions",
        method="POST",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {CLIENT_KEYS[0]}", "Accept": "application/json"},
        streaming_callback=received.append,
        header_callback=heads.append,
        request_timeout=TIMEOUT,
        raise_error=False,
    )


@pytest.mark.gen_test(timeout=30)
async def test_role_chunk_at_once_keepalives_while_working_then_content(http_client, base_url, sd):
    received = Received()
    heads: list[str] = []
    body = chat_body(
        "a lighthouse, 16:9",
        model="Z-Image",
        stream=True,
        seed=5,
        stream_options={"include_usage": True},
    )
    answer = start_stream(http_client, base_url, body, received, heads)

    await received.until(lambda raw: b"\n\n" in raw, "the role chunk")
    await sd.wait_requests(1, within=TIMEOUT)
    assert not sd.gate.is_set()  # the provider has not answered: the role chunk came first
    status_line = heads[0]
    assert " 200 " in status_line
    header_text = "".join(heads).lower()
    assert "content-type: text/event-stream" in header_text
    assert "x-accel-buffering: no" in header_text
    first = data_of(b"".join(received))[0]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}

    await received.until(lambda raw: raw.count(b": keep-alive") >= 3, "keep-alive comments")
    sd.gate.set()
    response = await answer
    assert response.code == 200
    raw = b"".join(received)
    assert all(not block.startswith("data: :") for block in events(raw))
    payloads = data_of(raw)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content.startswith("![a lighthouse](") and "/image-proxy?" in content
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.gen_test(timeout=30)
async def test_a_provider_failure_after_the_stream_began_is_an_error_event(
    http_client, base_url, sd
):
    received: list[bytes] = []
    answer = start_stream(
        http_client, base_url, chat_body("a cat", model="Z-Image", stream=True), received, []
    )
    await sd.wait_requests(1, within=TIMEOUT)
    sd.script(FakeSD.failure_answer("overloaded", status=503))
    sd.gate.set()
    response = await answer
    assert response.code == 200
    payloads = data_of(b"".join(received))
    assert payloads[-1] == "[DONE]"
    error = payloads[-2]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error" and "SD" in error["message"]
    assert SD_KEY not in b"".join(received).decode()


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_leaves_stops_its_provider_call_and_rests_no_key(
    http_client, base_url, http_port, sd, app
):
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", http_port))
    body = json.dumps(chat_body("a cat", model="Z-Image", stream=True)).encode()
    await stream.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + CLIENT_KEYS[0].encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await stream.read_until(b"\r\n\r\n")
    await sd.wait_requests(1, within=TIMEOUT)
    stream.close()
    await asyncio.wait_for(sd.client_left.wait(), TIMEOUT)  # the gateway dropped the call
    service = app.services.generation
    assert service.providers["SD"].keys.resting() == 0
    sd.gate.set()
    health = await http_client.fetch(base_url + "/health")
    assert health.code == 200


@pytest.mark.gen_test(timeout=30)
async def test_validation_errors_come_before_any_stream(http_client, base_url, sd):
    response = await http_client.fetch(
        base_url + "/v1/chat/completions",
        method="POST",
        body=json.dumps(chat_body("a cat", model="nope", stream=True)),
        headers={"Authorization": f"Bearer {CLIENT_KEYS[0]}"},
        raise_error=False,
    )
    assert response.code == 404
    assert json.loads(response.body)["error"]["code"] == "model_not_found"
    assert sd.requests == []
