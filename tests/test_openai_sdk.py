"""The official openai Python package as the client, against the gateway on loopback."""

from __future__ import annotations

import base64
import re

import openai
import pytest
from conftest import CLIENT_KEYS, register_secret
from fakes import Answer, FakeSD
from pngcheck import png_info

SD_KEYS = ("sd-sdk-key-one-7171", "sd-sdk-key-two-8181")
register_secret(*SD_KEYS)


@pytest.fixture
def gateway_env(sd):
    """The demo provider plus the fake SD provider."""
    return {
        "SD_API_KEY": ",".join(SD_KEYS),
        "SD_API_BASE": sd.url("gen"),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
    }


def sdk(base_url: str, key: str = CLIENT_KEYS[0]) -> openai.AsyncOpenAI:
    """An SDK client as a user would make one; no retries so each call is one request."""
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.mark.gen_test
async def test_models_list(base_url):
    async with sdk(base_url) as client:
        models = await client.models.list()
    assert [model.id for model in models.data] == ["Z-Image", "imagegate-demo"]


@pytest.mark.gen_test
async def test_chat_completion_gives_a_renderable_image(base_url, http_client):
    async with sdk(base_url) as client:
        completion = await client.chat.completions.create(
            model="imagegate-demo",
            messages=[{"role": "user", "content": "a paper boat on a pond, 9:16"}],
            seed=11,
        )
    content = completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    link = re.fullmatch(r"!\[a paper boat on a pond\]\((\S+)\)", content).group(1)
    image = await http_client.fetch(link)
    info = png_info(image.body)
    assert (info["width"], info["height"]) == (576, 1024)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("kwargs", "key", "exception", "status"),
    [
        ({"model": "imagegate-demo"}, "wrong", openai.AuthenticationError, 401),
        ({"model": "no-such-model"}, CLIENT_KEYS[0], openai.NotFoundError, 404),
        (
            {"model": "imagegate-demo", "extra_body": {"n": 99}},
            CLIENT_KEYS[0],
            openai.BadRequestError,
            400,
        ),
    ],
)
async def test_errors_raise_the_sdk_exceptions(base_url, kwargs, key, exception, status):
    async with sdk(base_url, key) as client:
        with pytest.raises(exception) as caught:
            await client.chat.completions.create(
                messages=[{"role": "user", "content": "a cat"}], **kwargs
            )
    assert caught.value.status_code == status
    assert caught.value.body["code"]


@pytest.mark.gen_test
async def test_streamed_deltas_join_to_the_non_streaming_content(base_url):
    arguments = {
        "model": "imagegate-demo",
        "messages": [{"role": "user", "content": "a kite over the sea, 3:2"}],
        "seed": 21,
    }
    async with sdk(base_url) as client:
        whole = await client.chat.completions.create(**arguments)
        stream = await client.chat.completions.create(
            **arguments, stream=True, stream_options={"include_usage": True}
        )
        deltas, finish, usage, ids = [], [], None, set()
        async for chunk in stream:
            ids.add(chunk.id)
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                deltas.append(choice.delta.content or "")
                if choice.finish_reason:
                    finish.append(choice.finish_reason)
    assert "".join(deltas) == whole.choices[0].message.content
    assert finish == ["stop"]
    assert len(ids) == 1
    assert usage is not None and usage.total_tokens > 0


@pytest.mark.gen_test
async def test_images_generate_in_both_formats(base_url, http_client, sd):
    async with sdk(base_url) as client:
        as_b64 = await client.images.generate(model="Z-Image", prompt="a lamp, 9:16")
        as_url = await client.images.generate(
            model="imagegate-demo", prompt="a lamp", response_format="url", n=2, size="512x512"
        )
    png_info(base64.b64decode(as_b64.data[0].b64_json))
    assert sd.last().json["width"] == 1152 and sd.last().json["height"] == 2048
    assert as_b64.data[0].revised_prompt == "a lamp"
    assert len(as_url.data) == 2
    for image in as_url.data:
        info = png_info((await http_client.fetch(image.url)).body)
        assert (info["width"], info["height"]) == (512, 512)


@pytest.mark.gen_test
async def test_upstream_failures_are_not_retried_by_the_sdk(base_url, sd):
    sd.default = FakeSD.failure_answer("overloaded", status=503)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], timeout=30)
    async with client:  # the SDK's default: two retries of 5xx answers, unless told not to
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(
                model="Z-Image", messages=[{"role": "user", "content": "a cat"}]
            )
    assert caught.value.status_code == 502
    assert len(sd.requests) == len(SD_KEYS)  # each key once; no SDK retry


@pytest.mark.gen_test
async def test_a_timeout_raises_the_sdks_status_error(base_url, sd, app):
    sd.default = Answer(hang=True)
    app.services.generation.providers["SD"].timeout = 0.5
    async with sdk(base_url) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="Z-Image", messages=[{"role": "user", "content": "a cat"}]
            )
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"
