"""Kind ``gemini``: Google's generateContent with image output, against a fake of its shapes."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from conftest import (
    CLIENT_KEYS,
    LINK,
    assert_error,
    call,
    chat_body,
    json_of,
    post_chat,
    register_secret,
)
from fakes import Answer, FakeGemini, FakeSet, data_uri, png_bytes
from fakes.gemini import candidates_answer, inline_part
from pngcheck import png_info

from tornado_imagegate.config import load_settings

GEMINI_KEYS = ("AIza-gemini-key-one-1357", "AIza-gemini-key-two-2468")
register_secret(*GEMINI_KEYS)
MODEL = "gemini-2.5-flash-image"
THINKING_MODEL = "gemini-3-pro-image-preview"
SHOW_THOUGHTS = {"generationConfig": {"thinkingConfig": {"includeThoughts": True}}}


@pytest.fixture
def fakes(io_loop):
    """The fake Gemini API and its (unused) image host."""
    started = FakeSet(gemini=FakeGemini)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes):
    """One gemini group with two keys, at the fake's base URL; a Gemini 3 image model that
    shows its thoughts."""
    return {
        "IMAGE_GEN_MODEL_1": MODEL,
        "IMAGE_GEN_API_BASE_1": fakes.gemini.base_url(),
        "IMAGE_GEN_API_KEY_1": ",".join(GEMINI_KEYS),
        "IMAGE_GEN_KIND_1": "gemini",
        "IMAGE_GEN_MODEL_2": THINKING_MODEL,
        "IMAGE_GEN_API_BASE_2": fakes.gemini.base_url(),
        "IMAGE_GEN_API_KEY_2": GEMINI_KEYS[0],
        "IMAGE_GEN_KIND_2": "gemini",
        "IMAGE_GEN_EXTRA_2": json.dumps(SHOW_THOUGHTS),
        "IMAGE_GEN_TIMEOUT": "5",
    }


async def chat_links(http_client, base_url, prompt="a cat on a roof, 16:9", **extra):
    """A chat completion that must succeed: its image links."""
    response = await post_chat(http_client, base_url, chat_body(prompt, model=MODEL, **extra))
    assert response.code == 200, response.body
    return LINK.findall(json_of(response)["choices"][0]["message"]["content"])


async def images(http_client, base_url, body):
    """POST /v1/images/generations."""
    return await call(http_client, base_url, "/v1/images/generations", method="POST", body=body)


def test_no_base_url_means_googles_endpoint() -> None:
    settings = load_settings(
        {
            "IMAGE_GEN_MODEL_1": MODEL,
            "IMAGE_GEN_API_KEY_1": GEMINI_KEYS[0],
            "IMAGE_GEN_KIND_1": "gemini",
        }
    )
    assert settings.groups[0].endpoint == "https://generativelanguage.googleapis.com/v1beta"


@pytest.mark.gen_test
async def test_chat_sends_the_prompt_the_ratio_and_the_key_in_a_header(
    http_client, base_url, fakes
):
    [link] = await chat_links(http_client, base_url)
    sent = fakes.gemini.last()
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.key in GEMINI_KEYS
    assert sent.query == ""  # never ?key=
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": "a cat on a roof"}]}],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "16:9"},
        },
    }
    png_info((await http_client.fetch(link)).body)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("size", "ratio"), [("1024x1024", "1:1"), ("1000x760", "4:3"), ("600x1400", "9:16")]
)
async def test_a_size_goes_as_the_nearest_aspect_ratio_gemini_takes(
    http_client, base_url, fakes, size, ratio
):
    await chat_links(http_client, base_url, "a fox", size=size)
    assert fakes.gemini.last().json["generationConfig"]["imageConfig"] == {"aspectRatio": ratio}


@pytest.mark.gen_test
async def test_a_given_seed_is_sent_and_none_is_invented(http_client, base_url, fakes):
    await chat_links(http_client, base_url, "a fox", seed=42)
    assert fakes.gemini.last().json["generationConfig"]["seed"] == 42
    await chat_links(http_client, base_url, "a fox")
    assert "seed" not in fakes.gemini.last().json["generationConfig"]


@pytest.mark.gen_test
async def test_the_inline_image_is_served_by_the_gateway(http_client, base_url, fakes):
    image = png_bytes(48, seed=3)
    fakes.gemini.script(FakeGemini.images_answer(image, snake_case=True))
    [link] = await chat_links(http_client, base_url)
    await fakes.gemini.aclose()
    assert (await http_client.fetch(link)).body == image


@pytest.mark.gen_test
async def test_a_streamed_chat_gets_the_image(http_client, base_url, fakes):
    image = png_bytes(44, seed=4)
    fakes.gemini.script(FakeGemini.images_answer(image))
    response = await post_chat(http_client, base_url, chat_body("a cat", model=MODEL, stream=True))
    assert response.code == 200
    events = [
        line[len("data: ") :]
        for line in response.body.decode().splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    content = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
    )
    [link] = LINK.findall(content)
    assert (await http_client.fetch(link)).body == image


@pytest.mark.gen_test
async def test_two_images_in_one_answer_give_as_many_as_asked(http_client, base_url, fakes):
    first, second = png_bytes(40, seed=10), png_bytes(40, seed=11)
    fakes.gemini.script(FakeGemini.images_answer(first, second))
    [link] = await chat_links(http_client, base_url, "a fox")
    assert (await http_client.fetch(link)).body == first
    fakes.gemini.script(FakeGemini.images_answer(first), FakeGemini.images_answer(second))
    links = await chat_links(http_client, base_url, "a fox", n=2)
    assert len(fakes.gemini.requests) == 3  # one image a request
    bodies = {(await http_client.fetch(link)).body for link in links}
    assert bodies == {first, second}


@pytest.mark.gen_test
@pytest.mark.parametrize("fmt", ["b64_json", "url"])
async def test_images_api_answers_with_the_image_and_geminis_usage(
    http_client, base_url, fakes, fmt
):
    image = png_bytes(52, seed=12)
    fakes.gemini.script(FakeGemini.images_answer(image))
    response = await images(
        http_client,
        base_url,
        {
            "model": MODEL,
            "prompt": "a fox",
            "size": "1792x1024",
            "response_format": fmt,
        },
    )
    assert response.code == 200, response.body
    answer = json_of(response)
    [entry] = answer["data"]
    if fmt == "b64_json":
        assert base64.b64decode(entry["b64_json"]) == image
    else:
        assert (await http_client.fetch(entry["url"])).body == image
    assert answer["usage"] == {"input_tokens": 12, "output_tokens": 1290, "total_tokens": 1302}
    assert fakes.gemini.last().json["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"


@pytest.mark.gen_test
async def test_thought_images_are_not_the_answer(http_client, base_url, fakes):
    body = {"model": THINKING_MODEL, "prompt": "a fox", "response_format": "b64_json"}
    response = await images(http_client, base_url, body)
    assert response.code == 200, response.body
    [entry] = json_of(response)["data"]
    assert base64.b64decode(entry["b64_json"]) == fakes.gemini.drawn[-1]
    sent = fakes.gemini.last().json["generationConfig"]
    assert sent["thinkingConfig"] == {"includeThoughts": True}
    assert sent["imageConfig"] == {"aspectRatio": "1:1"}
    response = await post_chat(http_client, base_url, chat_body("a fox", model=THINKING_MODEL))
    assert response.code == 200, response.body
    [link] = LINK.findall(json_of(response)["choices"][0]["message"]["content"])
    assert (await http_client.fetch(link)).body == fakes.gemini.drawn[-1]


@pytest.mark.gen_test
async def test_gemini_3_takes_four_input_images_and_2_5_three(http_client, base_url, fakes):
    pictures = [png_bytes(24, seed=seed) for seed in range(40, 44)]
    parts = [{"type": "text", "text": "put them in one picture"}]
    parts += [{"type": "image_url", "image_url": {"url": data_uri(p)}} for p in pictures]
    response = await post_chat(http_client, base_url, chat_body(parts, model=THINKING_MODEL))
    assert response.code == 200, response.body
    sent = fakes.gemini.last().json["contents"][0]["parts"]
    assert [base64.b64decode(part["inlineData"]["data"]) for part in sent[1:]] == pictures
    refused = await post_chat(http_client, base_url, chat_body(parts, model=MODEL))
    assert "at most 3" in assert_error(refused, 400, "invalid_image_input")["message"]
    assert len(fakes.gemini.requests) == 1


@pytest.mark.gen_test
async def test_a_text_only_answer_is_502_with_what_the_model_said(http_client, base_url, fakes):
    fakes.gemini.script(FakeGemini.text_answer("I can only describe a cat in words."))
    response = await post_chat(http_client, base_url, chat_body("a cat", model=MODEL))
    error = assert_error(response, 502, "upstream_error")
    assert "IMAGE_GEN_1" in error["message"]
    assert "I can only describe a cat in words." in error["message"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (FakeGemini.safety_answer("IMAGE_SAFETY"), "IMAGE_SAFETY"),
        (FakeGemini.safety_answer("PROHIBITED_CONTENT"), "PROHIBITED_CONTENT"),
        (FakeGemini.blocked_prompt_answer("SAFETY"), "SAFETY"),
    ],
)
async def test_a_safety_refusal_is_400_and_blames_no_key(
    http_client, base_url, fakes, answer, reason
):
    fakes.gemini.script(answer)
    response = await post_chat(http_client, base_url, chat_body("a cat", model=MODEL))
    error = assert_error(response, 400, "upstream_rejected")
    assert reason in error["message"]
    assert len(fakes.gemini.requests) == 1  # no other key was tried
    # The key that was refused is not resting: both keys keep serving.
    for _ in range(4):
        await chat_links(http_client, base_url, "a fox")
    assert set(fakes.gemini.keys_used()[1:]) == set(GEMINI_KEYS)


@pytest.mark.gen_test
async def test_429_fails_over_and_the_key_rests_for_retry_after(http_client, base_url, fakes):
    limited = GEMINI_KEYS[0]
    fakes.gemini.default = Answer(
        json=fakes.gemini.default.json,
        per_key={limited: FakeGemini.rate_limited_answer("60")},
    )
    for _ in range(4):
        assert len(await chat_links(http_client, base_url, "a bird")) == 1
    assert fakes.gemini.keys_used().count(limited) == 1


@pytest.mark.gen_test
async def test_an_invalid_key_is_taken_out_like_a_401(http_client, base_url, fakes):
    fakes.gemini.valid_keys = {GEMINI_KEYS[1]}
    for _ in range(4):
        assert len(await chat_links(http_client, base_url, "a bird")) == 1
    assert fakes.gemini.keys_used().count(GEMINI_KEYS[0]) == 1
    fakes.gemini.valid_keys = set()
    response = await post_chat(http_client, base_url, chat_body("a cat", model=MODEL))
    assert response.code in (502, 503)
    assert "IMAGE_GEN_1" in json_of(response)["error"]["message"]


@pytest.mark.gen_test
async def test_the_openai_sdk_gets_images_from_gemini(base_url, fakes):
    image = png_bytes(36, seed=14)
    fakes.gemini.script(Answer(json=candidates_answer(inline_part(image))))
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], max_retries=0, timeout=30
    ) as client:
        result = await client.images.generate(model=MODEL, prompt="a heron, 9:16")
    assert base64.b64decode(result.data[0].b64_json) == image
    assert result.usage is not None and result.usage.total_tokens == 1302
    assert fakes.gemini.last().json["generationConfig"]["imageConfig"]["aspectRatio"] == "9:16"
