"""The official openai Python package as the client, against the gateway on loopback."""

from __future__ import annotations

import re

import openai
import pytest
from conftest import CLIENT_KEYS
from pngcheck import png_info


def sdk(base_url: str, key: str = CLIENT_KEYS[0]) -> openai.AsyncOpenAI:
    """An SDK client as a user would make one; no retries so each call is one request."""
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.mark.gen_test
async def test_models_list(base_url):
    async with sdk(base_url) as client:
        models = await client.models.list()
    assert [model.id for model in models.data] == ["imagegate-demo"]


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
