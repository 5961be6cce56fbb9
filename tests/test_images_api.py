"""POST /v1/images/generations: the OpenAI Images API over the same pipeline as chat."""

from __future__ import annotations

import base64
import json

import pytest
from conftest import assert_error, call, json_of, register_secret, with_env
from fakes import Answer, FakeLLM, FakeOrigin, FakeSiliconFlow, png_of_length
from pngcheck import png_info

SF_KEY = "sf-images-key-5151"
LLM_KEY = "llm-images-key-6161"
register_secret(SF_KEY, LLM_KEY)


@pytest.fixture
def upstreams(io_loop):
    images = FakeOrigin()
    sf, llm = FakeSiliconFlow(images), FakeLLM()
    yield sf, llm, images
    for fake in (sf, llm, images):
        fake.close()


@pytest.fixture
def gateway_env(upstreams, request):
    sf, llm, _ = upstreams
    env = {
        "FLUX_GEN_MODEL": "flux-a,flux-b",
        "FLUX_GEN_API_BASE": sf.url("v1/images/generations"),
        "FLUX_GEN_API_KEY": SF_KEY,
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
    }
    extra = getattr(request, "param", {})
    if extra.get("OPENAI_MODEL"):
        env.update({"OPENAI_API_BASE": llm.base_url(), "OPENAI_API_KEY": LLM_KEY})
    env.update(extra)
    return env


async def images(http_client, base_url, body):
    return await call(http_client, base_url, "/v1/images/generations", method="POST", body=body)


@pytest.mark.gen_test
async def test_b64_json_is_the_default(http_client, base_url, upstreams):
    sf, _, _ = upstreams
    response = await images(http_client, base_url, {"model": "flux-b", "prompt": "a fox, 16:9"})
    assert response.code == 200
    answer = json_of(response)
    assert isinstance(answer["created"], int)
    [entry] = answer["data"]
    png_info(base64.b64decode(entry["b64_json"]))
    assert entry["revised_prompt"] == "a fox"
    assert sf.last().json["model"] == "flux-b"
    assert sf.last().json["image_size"] == "1024x576"


def b64_body(encoded: str) -> Answer:
    """A provider answer carrying this base64 text exactly as given (JSON written by hand)."""
    body = '{"created": 1, "data": [{"b64_json": "' + encoded + '"}]}'
    return Answer(body=body.encode("ascii"), content_type="application/json")


@pytest.mark.gen_test
async def test_b64_json_reaches_the_client_as_the_provider_sent_it(
    http_client, base_url, upstreams
):
    sf, _, _ = upstreams
    image = png_of_length(3 * 400 + 1)  # one byte over a group: "==" padding
    canonical = base64.b64encode(image).decode("ascii")
    # The same bytes with the unused low bits of the last character set: decoding and encoding
    # again would give the canonical text, not this one.
    sent = canonical[:-3] + chr(ord(canonical[-3]) + 1) + "=="
    assert sent != canonical and base64.b64decode(sent) == image
    sf.script(b64_body(sent), b64_body(sent))
    first = await images(http_client, base_url, {"model": "flux-a", "prompt": "a fox"})
    assert json_of(first)["data"][0]["b64_json"] == sent
    # The image was kept all the same: its link serves the very bytes.
    again = {"model": "flux-a", "prompt": "a fox", "response_format": "url"}
    [entry] = json_of(await images(http_client, base_url, again))["data"]
    assert (await http_client.fetch(entry["url"])).body == image


@pytest.mark.gen_test
async def test_b64_json_with_escaped_slashes_is_read_as_json(http_client, base_url, upstreams):
    sf, _, _ = upstreams
    image = png_of_length(3000)
    encoded = base64.b64encode(image).decode("ascii")
    assert "/" in encoded or "+" in encoded
    sf.script(b64_body(encoded.replace("/", "\\/")))
    response = await images(http_client, base_url, {"model": "flux-a", "prompt": "a fox"})
    [entry] = json_of(response)["data"]
    assert entry["b64_json"] == encoded
    assert base64.b64decode(entry["b64_json"]) == image
    assert json.loads(response.body) == json_of(response)


@pytest.mark.gen_test
@pytest.mark.parametrize("junk", ["not base64 at all!", r"iVBORw0KGgo\u00e9AAAA", r"QUJD\"QUJD"])
async def test_b64_json_that_is_not_base64_is_refused(http_client, base_url, upstreams, junk):
    sf, _, _ = upstreams
    sf.script(b64_body(junk))
    response = await images(http_client, base_url, {"model": "flux-a", "prompt": "a fox"})
    assert_error(response, 502, "upstream_error")


@pytest.mark.gen_test
async def test_url_format_gives_the_gateways_lasting_link(http_client, base_url, upstreams):
    _, _, image_host = upstreams
    response = await images(
        http_client,
        base_url,
        {
            "model": "flux-a",
            "prompt": "a fox",
            "response_format": "url",
            "n": 2,
            "size": "512x1024",
        },
    )
    data = json_of(response)["data"]
    assert len(data) == 2
    for path in list(image_host.routes):
        image_host.status(path, 404)
    for entry in data:
        assert entry["url"].startswith(base_url + "/image-proxy?")
        fetched = await http_client.fetch(entry["url"])
        png_info(fetched.body)


@pytest.mark.gen_test
@pytest.mark.parametrize("model", [None, "dall-e-2", "dall-e-3", "gpt-image-1"])
async def test_absent_or_unknown_models_use_the_default(http_client, base_url, upstreams, model):
    sf, _, _ = upstreams
    body = {
        "prompt": "a fox",
        "size": "512x512",
        "quality": "hd",
        "style": "vivid",
        "user": "someone",
        "response_format": "b64_json",
    }
    if model:
        body["model"] = model
    response = await images(http_client, base_url, body)
    assert response.code == 200
    assert sf.last().json["model"] == "flux-a"  # the first model in configuration order


@pytest.mark.gen_test
@with_env({"IMAGES_DEFAULT_MODEL": "imagegate-demo"})
async def test_the_default_model_is_configurable(http_client, base_url, upstreams):
    sf, _, _ = upstreams
    response = await images(
        http_client, base_url, {"model": "dall-e-2", "prompt": "a fox", "size": "256x256"}
    )
    png = base64.b64decode(json_of(response)["data"][0]["b64_json"])
    assert (png_info(png)["width"], png_info(png)["height"]) == (256, 256)
    assert sf.requests == []


@pytest.mark.gen_test
@with_env({"OPENAI_MODEL": "gpt-test"})
async def test_revised_prompt_is_the_optimised_prompt(http_client, base_url, upstreams):
    sf, llm, _ = upstreams
    response = await images(http_client, base_url, {"prompt": "a fox"})
    assert json_of(response)["data"][0]["revised_prompt"] == llm.reply
    assert sf.last().json["prompt"] == llm.reply


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a fox", "response_format": "png"}, "response_format"),
        ({"prompt": "a fox", "n": 11}, "n"),
        ({"prompt": "a fox", "size": "huge"}, "size"),
    ],
)
async def test_bad_fields_are_400(http_client, base_url, body, param):
    error = assert_error(await images(http_client, base_url, body), 400, "invalid_parameters")
    assert error["param"] == param


@pytest.mark.gen_test
async def test_images_api_needs_the_key(http_client, base_url):
    response = await call(
        http_client,
        base_url,
        "/v1/images/generations",
        method="POST",
        body={"prompt": "a fox"},
        key=None,
    )
    assert_error(response, 401, "invalid_api_key")
