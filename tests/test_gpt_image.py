"""Kind ``openai-images`` with gpt-image models: their fields passed through, base64, usage."""

from __future__ import annotations

import base64

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
from fakes import Answer, FakeChatImages, FakeOpenAIImages, FakeSet, data_uri, png_bytes

from tornado_imagegate.generation import total_usage
from tornado_imagegate.providers import ProviderImage

OI_KEY = "sk-gpt-image-key-8642"
CHAT_KEY = "sk-or-chat-key-9753"
register_secret(OI_KEY, CHAT_KEY)
PASSED = {
    "quality": "high",
    "background": "transparent",
    "output_format": "webp",
    "output_compression": 80,
    "moderation": "low",
}


@pytest.fixture
def fakes(io_loop):
    """The fake OpenAI Images API, a fake chat endpoint (OpenRouter, Gemini's compatible one)."""
    started = FakeSet(oi=FakeOpenAIImages, chat=FakeChatImages)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes):
    """gpt-image and dall-e-3 on the fake Images API; a chat-kind group on the fake chat;
    chatgpt-image-latest and dall-e-2 on the Images API again."""
    return {
        "IMAGE_GEN_MODEL_1": "gpt-image-1,dall-e-3",
        "IMAGE_GEN_API_BASE_1": fakes.oi.url("v1"),
        "IMAGE_GEN_API_KEY_1": OI_KEY,
        "IMAGE_GEN_KIND_1": "openai-images",
        "IMAGE_GEN_MODEL_2": "google/gemini-2.5-flash-image",
        "IMAGE_GEN_API_BASE_2": fakes.chat.url("v1"),
        "IMAGE_GEN_API_KEY_2": CHAT_KEY,
        "IMAGE_GEN_KIND_2": "chat",
        "IMAGE_GEN_MODEL_3": "chatgpt-image-latest,dall-e-2",
        "IMAGE_GEN_API_BASE_3": fakes.oi.url("v1"),
        "IMAGE_GEN_API_KEY_3": OI_KEY,
        "IMAGE_GEN_KIND_3": "openai-images",
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
    }


async def images(http_client, base_url, body):
    """POST /v1/images/generations."""
    return await call(http_client, base_url, "/v1/images/generations", method="POST", body=body)


@pytest.mark.gen_test
async def test_gpt_image_fields_pass_through_and_usage_comes_back(http_client, base_url, fakes):
    response = await images(
        http_client, base_url, {"model": "gpt-image-1", "prompt": "a kite", **PASSED}
    )
    assert response.code == 200, response.body
    sent = fakes.oi.last().json
    assert {name: sent[name] for name in PASSED} == PASSED
    assert "response_format" not in sent
    answer = json_of(response)
    assert answer["usage"] == FakeOpenAIImages.GPT_IMAGE_USAGE
    image = base64.b64decode(answer["data"][0]["b64_json"])
    assert image[:4] == b"RIFF" and image[8:12] == b"WEBP"


@pytest.mark.gen_test
async def test_fields_not_sent_are_not_invented(http_client, base_url, fakes):
    response = await images(http_client, base_url, {"model": "gpt-image-1", "prompt": "a kite"})
    assert response.code == 200, response.body
    assert fakes.oi.last().json == {
        "model": "gpt-image-1",
        "prompt": "a kite",
        "n": 1,
        "size": "1024x1024",
    }


@pytest.mark.gen_test
async def test_a_jpeg_is_kept_and_served_as_a_jpeg(http_client, base_url, fakes):
    response = await images(
        http_client,
        base_url,
        {
            "model": "gpt-image-1",
            "prompt": "a kite",
            "output_format": "jpeg",
            "response_format": "url",
        },
    )
    assert response.code == 200, response.body
    assert "response_format" not in fakes.oi.last().json
    served = await http_client.fetch(json_of(response)["data"][0]["url"])
    assert served.headers["Content-Type"] == "image/jpeg"
    assert served.body.startswith(b"\xff\xd8\xff")


@pytest.mark.gen_test
async def test_chat_top_level_fields_reach_gpt_image_and_usage_stays_the_chats(
    http_client, base_url, fakes
):
    response = await post_chat(
        http_client,
        base_url,
        chat_body("a kite", model="gpt-image-1", quality="low", output_format="jpeg"),
    )
    assert response.code == 200, response.body
    sent = fakes.oi.last().json
    assert (sent["quality"], sent["output_format"]) == ("low", "jpeg")
    answer = json_of(response)
    assert set(answer["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    [link] = LINK.findall(answer["choices"][0]["message"]["content"])
    assert (await http_client.fetch(link)).headers["Content-Type"] == "image/jpeg"


@pytest.mark.gen_test
async def test_dall_e_answers_without_usage_have_none(http_client, base_url, fakes):
    response = await images(
        http_client, base_url, {"model": "dall-e-3", "prompt": "a kite", "quality": "hd"}
    )
    assert response.code == 200, response.body
    assert fakes.oi.last().json["quality"] == "hd"
    assert fakes.oi.last().json["response_format"] == "b64_json"
    assert "usage" not in json_of(response)


@pytest.mark.gen_test
async def test_chatgpt_image_latest_is_sized_and_answered_as_a_gpt_image_model(
    http_client, base_url, fakes
):
    body = {"model": "chatgpt-image-latest", "prompt": "a kite", "size": "1792x1024"}
    response = await images(http_client, base_url, body)
    assert response.code == 200, response.body
    sent = fakes.oi.last().json
    assert sent["size"] == "1536x1024"
    assert "response_format" not in sent
    assert json_of(response)["usage"] == FakeOpenAIImages.GPT_IMAGE_USAGE


@pytest.mark.gen_test
async def test_dall_e_3_makes_no_edits_and_is_refused_before_any_call(http_client, base_url, fakes):
    body = chat_body(
        [
            {"type": "text", "text": "make it snowy"},
            {"type": "image_url", "image_url": {"url": data_uri(png_bytes(seed=5))}},
        ],
        model="dall-e-3",
    )
    error = assert_error(
        await post_chat(http_client, base_url, body), 400, "image_input_not_supported"
    )
    assert "dall-e-3" in error["message"]
    assert not fakes.oi.requests


@pytest.mark.gen_test
async def test_dall_e_2_edits_one_image_and_refuses_two(base_url, fakes):
    png, mask = png_bytes(seed=31), png_bytes(seed=32)
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], max_retries=0, timeout=30
    ) as client:
        result = await client.images.edit(
            model="dall-e-2",
            image=("photo.png", png, "image/png"),
            mask=("mask.png", mask, "image/png"),
            prompt="add a hat",
            size="512x512",
        )
        assert base64.b64decode(result.data[0].b64_json)[:4] == b"\x89PNG"
        sent = fakes.oi.last()
        assert sent.path == "/v1/images/edits"
        assert [entry[2] for entry in sent.files["image"]] == [png]
        assert sent.json["size"] == "512x512"
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.edit(
                model="dall-e-2",
                image=[("a.png", png, "image/png"), ("b.png", mask, "image/png")],
                prompt="put them together",
            )
    assert refused.value.code == "invalid_image_input"
    assert "at most 1" in refused.value.message
    assert len(fakes.oi.requests) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quality", 3),
        ("background", "not a word!"),
        ("output_format", ["png"]),
        ("moderation", ""),
        ("output_compression", 101),
        ("output_compression", "high"),
    ],
)
async def test_malformed_fields_are_400_before_any_provider_call(
    http_client, base_url, fakes, field, value
):
    body = {"model": "gpt-image-1", "prompt": "a kite", field: value}
    error = assert_error(await images(http_client, base_url, body), 400, "invalid_parameters")
    assert field in error["message"]
    assert not fakes.oi.requests


def test_usage_of_several_answers_is_summed() -> None:
    usage = FakeOpenAIImages.GPT_IMAGE_USAGE
    made = [ProviderImage(data=b"a", usage=usage), ProviderImage(data=b"b")]
    made.append(ProviderImage(data=b"c", usage=usage))
    total = total_usage(made)
    assert total["total_tokens"] == 2 * usage["total_tokens"]
    assert total["output_tokens_details"]["image_tokens"] == 8320
    assert total_usage([ProviderImage(data=b"a")]) is None


@pytest.mark.gen_test
async def test_the_openai_sdk_passes_gpt_image_fields(base_url, fakes):
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], max_retries=0, timeout=30
    ) as client:
        result = await client.images.generate(
            model="gpt-image-1",
            prompt="a kite",
            quality="medium",
            background="opaque",
            output_format="jpeg",
            output_compression=60,
            moderation="auto",
        )
    sent = fakes.oi.last().json
    assert sent["output_compression"] == 60 and sent["moderation"] == "auto"
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\xff\xd8\xff")
    assert result.usage is not None
    assert result.usage.output_tokens_details.image_tokens == 4160


# --- chat kind: OpenRouter's and Gemini's OpenAI-compatible answers ---


def openrouter_answer(image: bytes) -> dict:
    """OpenRouter's image answer: text content, and ``message.images`` of data URIs."""
    return {
        "id": "gen-1718",
        "provider": "Google AI Studio",
        "model": "google/gemini-2.5-flash-image",
        "object": "chat.completion",
        "created": 1718000000,
        "choices": [
            {
                "logprobs": None,
                "finish_reason": "stop",
                "native_finish_reason": "STOP",
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Here is a kite over the sea.",
                    "refusal": None,
                    "reasoning": None,
                    "images": [
                        {"type": "image_url", "image_url": {"url": data_uri(image)}, "index": 0}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1300, "total_tokens": 1308},
    }


def gemini_compatible_answer(image: bytes) -> dict:
    """An answer whose content is a list of parts, the image as an ``image_url`` data URI."""
    return {
        "id": "abc",
        "object": "chat.completion",
        "created": 1718000000,
        "model": "gemini-2.5-flash-image",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Here you go."},
                        {"type": "image_url", "image_url": {"url": data_uri(image)}},
                    ],
                },
            }
        ],
    }


@pytest.mark.gen_test
@pytest.mark.parametrize("shape", [openrouter_answer, gemini_compatible_answer])
async def test_chat_kind_reads_openrouter_and_gemini_compatible_images(
    http_client, base_url, fakes, shape
):
    image = png_bytes(40, seed=21)
    fakes.chat.script(Answer(json=shape(image)))
    response = await post_chat(
        http_client, base_url, chat_body("a kite", model="google/gemini-2.5-flash-image")
    )
    assert response.code == 200, response.body
    content = json_of(response)["choices"][0]["message"]["content"]
    [link] = LINK.findall(content)
    assert "base64" not in content
    assert fakes.chat.last().path == "/v1/chat/completions"
    assert (await http_client.fetch(link)).body == image
