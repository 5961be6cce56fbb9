"""Self-test of tests/fakes: real shapes, scripting, per-key answers, delay, hang, gate, holds."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import pytest
from fakes import (
    DEFAULT_OPTIMISED_PROMPT,
    Answer,
    FakeChatImages,
    FakeGemini,
    FakeLLM,
    FakeOpenAIImages,
    FakeOrigin,
    FakeSD,
    FakeSiliconFlow,
    FakeUpstream,
    png_bytes,
)
from pngcheck import png_info
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse


@pytest.fixture
def client(io_loop):
    """The (curl) async HTTP client of this test's loop."""
    http = AsyncHTTPClient()
    yield http
    http.close()


@pytest.fixture
def image_host(io_loop):
    """The image host the fakes put their images on."""
    host = FakeOrigin()
    yield host
    host.close()


def _closing(fake: FakeUpstream):
    yield fake
    fake.close()


@pytest.fixture
def sf(io_loop, image_host):
    """A fake SiliconFlow."""
    yield from _closing(FakeSiliconFlow(image_host))


@pytest.fixture
def chat(io_loop, image_host):
    """A fake image-making chat endpoint."""
    yield from _closing(FakeChatImages(image_host))


@pytest.fixture
def oai(io_loop, image_host):
    """A fake OpenAI Images API."""
    yield from _closing(FakeOpenAIImages(image_host))


@pytest.fixture
def gemini(io_loop):
    """A fake Gemini API."""
    yield from _closing(FakeGemini())


@pytest.fixture
def sd(io_loop, image_host):
    """A fake Z-Image/SD API."""
    yield from _closing(FakeSD(image_host))


@pytest.fixture
def llm(io_loop):
    """A fake prompt-optimising LLM."""
    yield from _closing(FakeLLM())


async def post(
    client: AsyncHTTPClient, url: str, body: Any, key: str | None = "k1", **options: Any
) -> HTTPResponse:
    """POST JSON (or raw bytes) with a bearer key; never raises on an error status."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body)
    return await client.fetch(
        url, method="POST", body=data, headers=headers, raise_error=False, **options
    )


def json_of(response: HTTPResponse) -> Any:
    """The decoded JSON body of a response."""
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    return json.loads(response.body)


async def fetch_png(client: AsyncHTTPClient, url: str) -> dict[str, int]:
    """Fetch an image URL and check it is a real PNG."""
    response = await client.fetch(url, raise_error=False)
    assert response.code == 200
    return png_info(response.body)


SF_BODY = {
    "model": "black-forest-labs/FLUX.1-schnell",
    "prompt": "a cat on a roof",
    "image_size": "1024x1024",
    "num_inference_steps": 20,
    "seed": 1234,
    "batch_size": 2,
}


@pytest.mark.gen_test
async def test_siliconflow_default_answer_has_fetchable_images_and_records_the_request(client, sf):
    response = await post(client, sf.url("v1/images/generations"), SF_BODY, key="sf-key")
    assert response.code == 200
    answer = json_of(response)
    assert set(answer) == {"images", "timings", "seed"}
    assert answer["seed"] == 1234 and answer["timings"] == {"inference": 1.23}
    assert len(answer["images"]) == 2 and sf.image_urls == [i["url"] for i in answer["images"]]
    for image in answer["images"]:
        await fetch_png(client, image["url"])
    request = sf.last()
    assert (request.method, request.path, request.key) == (
        "POST",
        "/v1/images/generations",
        "sf-key",
    )
    assert request.json == SF_BODY and json.loads(request.body) == SF_BODY
    assert request.headers["authorization"] == "Bearer sf-key"
    assert sf.keys_used() == ["sf-key"]


@pytest.mark.gen_test
async def test_scripted_answers_come_in_order_then_the_default(client, sf):
    sf.script(
        FakeSiliconFlow.error_answer(429, "Request was rejected due to rate limiting."),
        FakeSiliconFlow.data_urls_answer("http://127.0.0.1:9/x.png"),
        FakeSiliconFlow.b64_answer(),
    )
    answers = [await post(client, sf.url("gen"), SF_BODY) for _ in range(4)]
    assert [a.code for a in answers] == [429, 200, 200, 200]
    assert json_of(answers[0]) == {
        "code": 20015,
        "message": "Request was rejected due to rate limiting.",
        "data": None,
    }
    assert json_of(answers[1])["data"] == [{"url": "http://127.0.0.1:9/x.png"}]
    png = base64.b64decode(json_of(answers[2])["data"][0]["b64_json"])
    assert png_info(png)["width"] == 64
    assert "images" in json_of(answers[3])
    assert not sf.queue


@pytest.mark.gen_test
async def test_per_key_answer_fails_one_key_and_serves_the_other(client, sd):
    sd.default = Answer(json=sd.default.json, per_key={"k1": FakeSD.failure_answer("busy", 429)})
    first = await post(client, sd.url("api/v1/generate_image"), {"prompt": "x"}, key="k1")
    second = await post(client, sd.url("api/v1/generate_image"), {"prompt": "x"}, key="k2")
    assert first.code == 429 and json_of(first) == {"success": False, "error": "busy"}
    assert second.code == 200 and json_of(second)["success"] is True
    assert sd.keys_used() == ["k1", "k2"]


@pytest.mark.gen_test
async def test_sd_success_and_failure_shapes(client, sd):
    body = {
        "prompt": "a cat",
        "width": 1024,
        "height": 1024,
        "steps": 8,
        "cfg": 1.0,
        "model_index": 0,
        "seed": 5,
    }
    sd.script(
        FakeSD.failure_answer("quota exhausted"),
        FakeSD.failure_answer("bad prompt", field="message"),
        FakeSD.failure_answer("down", status=503),
    )
    answers = [await post(client, sd.url("api/v1/generate_image"), body) for _ in range(4)]
    assert json_of(answers[0]) == {"success": False, "error": "quota exhausted"}
    assert json_of(answers[1]) == {"success": False, "message": "bad prompt"}
    assert answers[2].code == 503
    success = json_of(answers[3])
    assert success == {"success": True, "data": {"image_url": sd.image_urls[-1]}}
    await fetch_png(client, success["data"]["image_url"])


@pytest.mark.gen_test
async def test_chat_images_default_and_alternative_shapes(client, chat):
    body = {
        "model": "gpt-image-chat",
        "messages": [{"role": "user", "content": "a cat"}],
        "stream": False,
    }
    default = json_of(await post(client, chat.url("v1/chat/completions"), body))
    assert default["object"] == "chat.completion" and default["model"] == "gpt-image-chat"
    assert set(default) == {"id", "object", "created", "model", "choices", "usage"}
    choice = default["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    url = re.fullmatch(r"!\[image\]\((.+)\)", choice["message"]["content"]).group(1)
    await fetch_png(client, url)

    png = png_bytes(seed=9)
    chat.script(
        FakeChatImages.content_answer(f"Here it is: {url}"),
        FakeChatImages.raw_image_answer(png),
        FakeChatImages.data_answer(urls=[url]),
        FakeChatImages.data_answer(pngs=[png]),
        FakeChatImages.message_images_answer("data:image/png;base64,AAAA"),
        FakeChatImages.error_answer(401, "Incorrect API key provided", "invalid_api_key"),
    )
    answers = [await post(client, chat.url("v1/chat/completions"), body) for _ in range(6)]
    assert json_of(answers[0])["choices"][0]["message"]["content"] == f"Here it is: {url}"
    assert answers[1].headers["Content-Type"] == "image/png" and answers[1].body == png
    assert json_of(answers[2])["data"] == [{"url": url}]
    assert base64.b64decode(json_of(answers[3])["data"][0]["b64_json"]) == png
    message = json_of(answers[4])["choices"][0]["message"]
    assert message["content"] == ""
    assert message["images"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    ]
    assert answers[5].code == 401
    assert json_of(answers[5]) == {
        "error": {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


@pytest.mark.gen_test
async def test_openai_images_b64_by_default_and_urls_on_request(client, oai):
    body = {"model": "dall-e-3", "prompt": "a cat", "n": 2, "size": "1024x1024"}
    b64 = json_of(await post(client, oai.url("v1/images/generations"), body))
    assert isinstance(b64["created"], int) and len(b64["data"]) == 2
    for item in b64["data"]:
        assert item["revised_prompt"] == "a cat"
        png_info(base64.b64decode(item["b64_json"]))
    urls = json_of(
        await post(client, oai.url("v1/images/generations"), {**body, "response_format": "url"})
    )
    assert [item["url"] for item in urls["data"]] == oai.image_urls
    await fetch_png(client, oai.image_urls[0])


@pytest.mark.gen_test
async def test_openai_images_gpt_image_is_base64_only_with_usage(client, oai):
    url = oai.url("v1/images/generations")
    body = {"model": "gpt-image-1", "prompt": "a cat", "n": 2, "output_format": "jpeg"}
    answer = json_of(await post(client, url, body))
    assert answer["usage"] == FakeOpenAIImages.GPT_IMAGE_USAGE
    assert answer["output_format"] == "jpeg" and len(answer["data"]) == 2
    for entry in answer["data"]:
        assert set(entry) == {"b64_json"}
        assert base64.b64decode(entry["b64_json"]).startswith(b"\xff\xd8\xff")
    refused = await post(client, url, {**body, "response_format": "b64_json"})
    assert refused.code == 400 and json_of(refused)["error"]["code"] == "unknown_parameter"


async def post_gemini(client: AsyncHTTPClient, url: str, body: Any, key: str | None):
    """POST JSON with the key in ``x-goog-api-key``, as Google's clients send it."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["x-goog-api-key"] = key
    return await client.fetch(
        url, method="POST", body=json.dumps(body), headers=headers, raise_error=False
    )


@pytest.mark.gen_test
async def test_gemini_shapes_keys_and_refusals(client, gemini):
    url = gemini.url("v1beta/models/gemini-2.5-flash-image:generateContent")
    body = {"contents": [{"role": "user", "parts": [{"text": "a cat"}]}]}
    answer = json_of(await post_gemini(client, url, body, "AIza-1"))
    parts = answer["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": "Here is your image."}
    png_info(base64.b64decode(parts[1]["inlineData"]["data"]))
    assert answer["usageMetadata"]["totalTokenCount"] == 1302
    assert (
        gemini.last().key == "AIza-1" and gemini.model_of(gemini.last()) == "gemini-2.5-flash-image"
    )
    assert (await post_gemini(client, url, body, None)).code == 403
    gemini.valid_keys = {"AIza-1"}
    bad = await post_gemini(client, url, body, "AIza-2")
    assert bad.code == 400
    assert json_of(bad)["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert (await post_gemini(client, gemini.url("v1beta/models/x"), body, "AIza-1")).code == 404
    gemini.script(FakeGemini.blocked_prompt_answer(), FakeGemini.rate_limited_answer("9"))
    blocked = json_of(await post_gemini(client, url, body, "AIza-1"))
    assert blocked["promptFeedback"] == {"blockReason": "PROHIBITED_CONTENT"}
    assert "candidates" not in blocked
    limited = await post_gemini(client, url, body, "AIza-1")
    assert limited.code == 429 and limited.headers["Retry-After"] == "9"
    assert json_of(limited)["error"]["status"] == "RESOURCE_EXHAUSTED"


@pytest.mark.gen_test
async def test_llm_default_reply_helpers_and_paths(client, llm):
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "optimise"}, {"role": "user", "content": "cat"}],
    }
    url = llm.base_url() + "/chat/completions"
    default = json_of(await post(client, url, body))
    assert default["choices"][0]["message"]["content"] == DEFAULT_OPTIMISED_PROMPT
    llm.reply = "a tabby cat"
    llm.script(
        FakeLLM.reply_answer("a grey cat", reasoning_content="let me think"),
        FakeLLM.think_answer("hmm", "a black cat"),
    )
    messages = [json_of(await post(client, url, body))["choices"][0]["message"] for _ in range(3)]
    assert messages[0] == {
        "role": "assistant",
        "content": "a grey cat",
        "reasoning_content": "let me think",
    }
    assert messages[1]["content"] == "<think>hmm</think>\na black cat"
    assert messages[2]["content"] == "a tabby cat"
    missing = await post(client, llm.url("v1/models"), body)
    assert missing.code == 404 and "error" in json_of(missing)
    assert [r.path for r in llm.requests][-1] == "/v1/models"


@pytest.mark.gen_test
async def test_get_is_405_and_invalid_json_is_400_in_each_service_shape(
    client, sf, chat, oai, sd, llm
):
    for fake in (sf, chat, oai, sd, llm):
        path = "v1/chat/completions"
        got = await client.fetch(fake.url(path), raise_error=False)
        assert got.code == 405 and got.headers["Allow"] == "POST"
        bad = await post(client, fake.url(path), b"{not json")
        assert bad.code == 400
        assert [(r.method, r.json) for r in fake.requests] == [("GET", None), ("POST", None)]
        assert fake.last().body == b"{not json"
        error = json_of(bad)
        if fake is sf:
            assert set(error) == {"code", "message", "data"}
        elif fake is sd:
            assert error["success"] is False and error["error"]
        else:
            assert set(error["error"]) == {"message", "type", "param", "code"}


@pytest.mark.gen_test
async def test_delay_and_a_failing_json_builder(client, sf):
    sf.script(Answer(json={"ok": 1}, delay=0.3), Answer(json=lambda request: 1 / 0))
    started = time.monotonic()
    delayed = await post(client, sf.url("gen"), SF_BODY)
    assert time.monotonic() - started >= 0.3 and json_of(delayed) == {"ok": 1}
    broken = await post(client, sf.url("gen"), SF_BODY)
    assert broken.code == 500 and isinstance(sf.errors[0], ZeroDivisionError)


@pytest.mark.gen_test
async def test_hang_times_the_client_out_and_close_drops_the_connection(client, sf, llm):
    sf.script(Answer(hang=True))
    with pytest.raises(HTTPClientError) as timed_out:
        await post(client, sf.url("gen"), SF_BODY, request_timeout=0.3)
    assert timed_out.value.code == 599
    assert len(sf.requests) == 1

    llm.default = Answer(hang=True)
    waiting = post(client, llm.base_url() + "/chat/completions", {"model": "m"}, request_timeout=5)
    future = asyncio.ensure_future(waiting)
    await llm.wait_requests(1)
    started = time.monotonic()
    await llm.aclose()
    with pytest.raises(HTTPClientError) as dropped:
        await future
    assert dropped.value.code == 599 and time.monotonic() - started < 2


@pytest.mark.gen_test
async def test_a_fake_that_requires_a_key_answers_401_without_one(client, sf):
    sf.require_key = True
    refused = await post(client, sf.url("v1/images/generations"), SF_BODY, key=None)
    assert refused.code == 401
    assert json_of(refused)["code"] == 20015  # SiliconFlow's own error body
    assert (await post(client, sf.url("v1/images/generations"), SF_BODY)).code == 200
    first, second = sf.requests
    assert first.answered_at is not None and first.received_at <= first.answered_at
    assert second.received_at >= first.received_at


@pytest.mark.gen_test
async def test_a_held_gate_chooses_the_answer_when_it_opens(client, sd):
    sd.gate.clear()
    pending = asyncio.ensure_future(post(client, sd.url("api"), {"prompt": "a cat"}))
    await sd.wait_requests(1)
    assert not pending.done()
    sd.script(FakeSD.failure_answer("overloaded", status=503))  # scripted after it arrived
    sd.gate.set()
    answer = await pending
    assert answer.code == 503 and json_of(answer) == {"success": False, "error": "overloaded"}


@pytest.mark.gen_test
async def test_a_client_hanging_up_is_seen(sd):
    sd.gate.clear()
    _reader, writer = await asyncio.open_connection("127.0.0.1", sd.port)
    writer.write(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    await sd.wait_requests(1)
    assert not sd.client_left.is_set()
    writer.close()  # drops the connection mid-request
    await asyncio.wait_for(sd.client_left.wait(), 10)


@pytest.mark.gen_test
async def test_a_held_route_sends_its_first_bytes_then_the_rest_on_release(image_host):
    body = png_bytes(48)
    held = image_host.hold("h.png", body, first=10, declare_length=True)
    received: list[bytes] = []
    client = AsyncHTTPClient(force_instance=True)
    try:
        answer = client.fetch(image_host.url("h.png"), streaming_callback=received.append)
        await held.asked.wait()
        assert not answer.done()
        held.release.set()
        response = await answer
    finally:
        client.close()
    assert response.headers["Content-Length"] == str(len(body))
    assert b"".join(received) == body and image_host.hits["h.png"] == 1


def test_noise_of_an_exact_size_is_a_real_png_the_same_from_the_same_seed():
    import random

    from fakes import noise_png_of_size

    first = noise_png_of_size(102_400, random.Random(5))
    assert len(first) == 102_400
    assert png_info(first)["width"] == 192
    assert noise_png_of_size(102_400, random.Random(5)) == first
    assert noise_png_of_size(102_400, random.Random(6)) != first
