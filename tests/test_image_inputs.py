"""Image inputs: images sent with a chat completion reach the provider intact, in its own field."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import random

import openai
import pytest
from conftest import (
    CLIENT_KEYS,
    LINK,
    LOG_WATCH,
    assert_error,
    call,
    chat_body,
    json_of,
    post_chat,
    register_secret,
)
from fakes import (
    Answer,
    FakeBFL,
    FakeChatImages,
    FakeDashScope,
    FakeFal,
    FakeGemini,
    FakeModelScope,
    FakeOpenAIImages,
    FakeSet,
    FakeSiliconFlow,
    TaskScript,
    data_uri,
    noise_png_of_size,
    png_bytes,
)
from test_failures import raw_chat

from tornado_imagegate.config import ConfigError, load_settings
from tornado_imagegate.images.inputs import previous_link
from tornado_imagegate.report import settings_report

OI_KEY = "sk-edits-key-5791"
CHAT_KEY = "sk-chat-inputs-key-2468"
GEMINI_KEY = "AIza-inputs-key-1357"
SF_KEY = "sk-siliconflow-inputs-8080"
BFL_KEY = "bfl-inputs-key-6060"
MS_KEY = "ms-inputs-key-7070"
FAL_KEY = "fal-inputs-key:8181"
DS_KEY = "sk-dashscope-inputs-9292"
register_secret(OI_KEY, CHAT_KEY, GEMINI_KEY, SF_KEY, BFL_KEY, MS_KEY, FAL_KEY, DS_KEY)
INPUT_MAX_BYTES = 64 * 1024
FAL_MODELS = (
    "fal-ai/flux-2/edit,fal-ai/flux-pro/kontext,fal-ai/flux-lora/inpainting,fal-ai/flux/dev,"
    "fal-ai/flux-pro/kontext/max/multi"
)


@pytest.fixture
def fakes(io_loop):
    """An edit-capable fake of each kind that takes images."""
    started = FakeSet(
        oi=FakeOpenAIImages,
        chat=FakeChatImages,
        gemini=FakeGemini,
        sf=FakeSiliconFlow,
        bfl=FakeBFL,
        ms=FakeModelScope,
        fal=FakeFal,
        ds=FakeDashScope,
    )
    started.ms.plan = started.ds.plan = ["done"]
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, request):
    """gpt-image on the Images API, a chat-kind model, a Gemini model (images off for one)."""
    return {
        "IMAGE_GEN_MODEL_1": "gpt-image-1",
        "IMAGE_GEN_API_BASE_1": fakes.oi.url("v1"),
        "IMAGE_GEN_API_KEY_1": OI_KEY,
        "IMAGE_GEN_KIND_1": "openai-images",
        "IMAGE_GEN_MODEL_2": "chat-image-model",
        "IMAGE_GEN_API_BASE_2": fakes.chat.url("v1"),
        "IMAGE_GEN_API_KEY_2": CHAT_KEY,
        "IMAGE_GEN_KIND_2": "chat",
        "IMAGE_GEN_MODEL_3": "gemini-2.5-flash-image",
        "IMAGE_GEN_API_BASE_3": fakes.gemini.base_url(),
        "IMAGE_GEN_API_KEY_3": GEMINI_KEY,
        "IMAGE_GEN_KIND_3": "gemini",
        "IMAGE_GEN_MODEL_4": "gemini-text-only",
        "IMAGE_GEN_API_BASE_4": fakes.gemini.base_url(),
        "IMAGE_GEN_API_KEY_4": GEMINI_KEY,
        "IMAGE_GEN_KIND_4": "gemini",
        "IMAGE_GEN_INPUTS_4": "false",
        "IMAGE_GEN_MODEL_5": "Qwen/Qwen-Image-Edit-2509,Kwai-Kolors/Kolors",
        "IMAGE_GEN_API_BASE_5": fakes.sf.url("v1"),
        "IMAGE_GEN_API_KEY_5": SF_KEY,
        "IMAGE_GEN_KIND_5": "siliconflow",
        "IMAGE_GEN_MODEL_6": "flux-kontext-pro,flux-pro-1.1,flux-pro-1.0-fill",
        "IMAGE_GEN_API_BASE_6": fakes.bfl.url("v1"),
        "IMAGE_GEN_API_KEY_6": BFL_KEY,
        "IMAGE_GEN_KIND_6": "bfl",
        "IMAGE_GEN_MODEL_7": "Qwen/Qwen-Image-Edit-2511,Qwen/Qwen-Image-Edit,Qwen/Qwen-Image",
        "IMAGE_GEN_API_BASE_7": fakes.ms.base(),
        "IMAGE_GEN_API_KEY_7": MS_KEY,
        "IMAGE_GEN_KIND_7": "modelscope",
        "IMAGE_GEN_MODEL_8": FAL_MODELS,
        "IMAGE_GEN_API_BASE_8": fakes.fal.url(""),
        "IMAGE_GEN_API_KEY_8": FAL_KEY,
        "IMAGE_GEN_KIND_8": "fal",
        "IMAGE_GEN_MODEL_9": (
            "qwen-image-edit-plus,qwen-image-edit,qwen-image-plus,wan2.6-image,qwen-image-2.0"
        ),
        "IMAGE_GEN_API_BASE_9": fakes.ds.base(),
        "IMAGE_GEN_API_KEY_9": DS_KEY,
        "IMAGE_GEN_KIND_9": "dashscope",
        "IMAGE_INPUT_MAX_BYTES": str(INPUT_MAX_BYTES),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        **getattr(request, "param", {}),
    }


def with_images(model: str, text: str, *urls: str) -> dict:
    """A chat body whose user message is ``text`` and an image_url part per URL."""
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return chat_body(parts, model=model)


async def links_of(http_client, base_url, body) -> list[str]:
    """A chat completion that must succeed: its image links."""
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body
    return LINK.findall(json_of(response)["choices"][0]["message"]["content"])


def received(fakes) -> int:
    """How many requests the providers received, together."""
    every = (fakes.oi, fakes.chat, fakes.gemini, fakes.sf, fakes.bfl, fakes.ms, fakes.fal, fakes.ds)
    return sum(len(fake.requests) for fake in every)


@pytest.mark.gen_test
async def test_an_uploaded_png_reaches_the_edits_endpoint_intact(http_client, base_url, fakes):
    png = png_bytes(seed=11)
    await links_of(http_client, base_url, with_images("gpt-image-1", "make it blue", data_uri(png)))
    sent = fakes.oi.last()
    assert sent.path == "/v1/images/edits"
    assert sent.key == OI_KEY
    assert sent.json["prompt"] == "make it blue"
    assert sent.json["model"] == "gpt-image-1"
    [(_, content_type, data)] = sent.files["image"]
    assert (content_type, data) == ("image/png", png)


@pytest.mark.gen_test
async def test_several_images_go_as_image_brackets(http_client, base_url, fakes):
    first, second = png_bytes(seed=12), png_bytes(seed=13)
    body = with_images("gpt-image-1", "merge them", data_uri(first), data_uri(second))
    await links_of(http_client, base_url, body)
    assert [data for _, _, data in fakes.oi.last().files["image[]"]] == [first, second]


@pytest.mark.gen_test
async def test_text_only_still_goes_to_generations(http_client, base_url, fakes):
    await links_of(http_client, base_url, chat_body("a kite", model="gpt-image-1"))
    assert fakes.oi.last().path == "/v1/images/generations"


@pytest.mark.gen_test
async def test_the_chat_kind_gets_image_url_parts(http_client, base_url, fakes):
    png = png_bytes(seed=14)
    await links_of(http_client, base_url, with_images("chat-image-model", "a hat", data_uri(png)))
    [message] = fakes.chat.last().json["messages"]
    text, image = message["content"]
    assert text == {"type": "text", "text": "a hat"}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png


@pytest.mark.gen_test
async def test_gemini_gets_inline_data_parts(http_client, base_url, fakes):
    png = png_bytes(seed=15)
    body = with_images("gemini-2.5-flash-image", "watercolour", data_uri(png))
    await links_of(http_client, base_url, body)
    [content] = fakes.gemini.last().json["contents"]
    text, image = content["parts"]
    assert text == {"text": "watercolour"}
    assert image["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(image["inlineData"]["data"]) == png


@pytest.mark.gen_test
async def test_siliconflow_edit_models_get_image_image2_image3(http_client, base_url, fakes):
    pngs = [png_bytes(seed=s) for s in (41, 42, 43)]
    body = with_images("Qwen/Qwen-Image-Edit-2509", "a hat", *map(data_uri, pngs))
    await links_of(http_client, base_url, body)
    sent = fakes.sf.last().json
    decoded = [base64.b64decode(sent[f].split(",", 1)[1]) for f in ("image", "image2", "image3")]
    assert decoded == pngs
    refused = with_images("Kwai-Kolors/Kolors", "a hat", data_uri(pngs[0]))
    response = await post_chat(http_client, base_url, refused)
    assert_error(response, 400, "image_input_not_supported")
    assert "Kwai-Kolors/Kolors" in json_of(response)["error"]["message"]
    assert len(fakes.sf.requests) == 1


@pytest.mark.gen_test
async def test_bfl_kontext_gets_input_image_fields(http_client, base_url, fakes):
    pngs = [png_bytes(seed=s) for s in (51, 52)]
    body = with_images("flux-kontext-pro", "a hat", *map(data_uri, pngs))
    await links_of(http_client, base_url, body)
    [sent] = fakes.bfl.submissions()
    assert sent.path == "/v1/flux-kontext-pro"
    fields = ("input_image", "input_image_2")
    assert [base64.b64decode(sent.json[f]) for f in fields] == pngs
    refused = with_images("flux-pro-1.1", "a hat", data_uri(pngs[0]))
    response = await post_chat(http_client, base_url, refused)
    assert_error(response, 400, "image_input_not_supported")
    assert len(fakes.bfl.submissions()) == 1


@pytest.mark.gen_test
async def test_modelscope_edit_models_get_image_url_as_a_list_of_data_uris(
    http_client, base_url, fakes
):
    pngs = [png_bytes(seed=s) for s in (61, 62, 63)]
    fakes.images.serve("photo", pngs[2])
    body = with_images(
        "Qwen/Qwen-Image-Edit-2511",
        "a hat",
        data_uri(pngs[0]),
        data_uri(pngs[1]),
        fakes.images.url("photo"),
    )
    await links_of(http_client, base_url, body)
    [sent] = [r for r in fakes.ms.requests if r.method == "POST"]
    assert sent.json["model"] == "Qwen/Qwen-Image-Edit-2511"
    assert sent.json["prompt"] == "a hat"
    # The linked image goes as the bytes the gateway checked, not as its link.
    assert all(url.startswith("data:image/png;base64,") for url in sent.json["image_url"])
    assert [base64.b64decode(url.split(",", 1)[1]) for url in sent.json["image_url"]] == pngs
    # The plain edit model takes one image; a text-to-image model none.
    two = with_images("Qwen/Qwen-Image-Edit", "x", data_uri(pngs[0]), data_uri(pngs[1]))
    assert_error(await post_chat(http_client, base_url, two), 400, "invalid_image_input")
    one = with_images("Qwen/Qwen-Image", "x", data_uri(pngs[0]))
    response = await post_chat(http_client, base_url, one)
    assert_error(response, 400, "image_input_not_supported")
    assert "Qwen/Qwen-Image" in json_of(response)["error"]["message"]
    assert len(fakes.ms.requests) == 2  # one submission, one poll
    await links_of(http_client, base_url, chat_body("a kite", model="Qwen/Qwen-Image"))
    assert "image_url" not in fakes.ms.requests[-2].json


@pytest.mark.gen_test
async def test_dashscope_edit_models_get_data_uris_then_the_text_and_answer_at_once(
    http_client, base_url, fakes
):
    pngs = [png_bytes(seed=s) for s in (64, 65)]
    fakes.images.serve("photo", pngs[1])
    body = with_images(
        "qwen-image-edit-plus", "a hat", data_uri(pngs[0]), fakes.images.url("photo")
    )
    body["negative_prompt"] = "blurry"
    [link] = await links_of(http_client, base_url, body)
    [edit] = fakes.ds.sync_calls
    assert edit.path == "/api/v1/services/aigc/multimodal-generation/generation"
    assert edit.key == DS_KEY
    assert "x-dashscope-async" not in edit.headers
    assert edit.json["model"] == "qwen-image-edit-plus"
    content = edit.json["input"]["messages"][0]["content"]
    # The images first, as data URIs of the bytes the gateway checked (the link's too), then
    # the text.
    assert all(part["image"].startswith("data:image/png;base64,") for part in content[:-1])
    assert fakes.ds.edit_images(edit) == pngs
    assert content[-1] == {"text": "a hat"}
    assert edit.json["parameters"]["n"] == 1
    assert edit.json["parameters"]["size"] == "1024*1024"
    assert edit.json["parameters"]["negative_prompt"] == "blurry"
    # Answered at once: no task, no poll; the gateway keeps and serves the edited image.
    assert fakes.ds.tasks == {} and fakes.ds.polls == []
    kept = await http_client.fetch(link)
    [made] = fakes.ds.image_urls
    assert kept.body == (await http_client.fetch(made)).body


@pytest.mark.gen_test
async def test_dashscope_text_to_image_models_still_go_as_tasks(http_client, base_url, fakes):
    await links_of(http_client, base_url, chat_body("a kite", model="qwen-image-plus"))
    [submission] = [r for r in fakes.ds.requests if r.method == "POST"]
    assert submission.path == "/api/v1/services/aigc/text2image/image-synthesis"
    assert submission.headers["x-dashscope-async"] == "enable"
    assert submission.json["input"] == {"prompt": "a kite"}
    assert len(fakes.ds.tasks) == 1 and len(fakes.ds.polls) == 1
    assert fakes.ds.sync_calls == []
    one = with_images("qwen-image-plus", "x", data_uri(png_bytes(seed=66)))
    assert_error(await post_chat(http_client, base_url, one), 400, "image_input_not_supported")
    assert len(fakes.ds.requests) == 2


@pytest.mark.gen_test
async def test_dashscope_plain_qwen_image_edit_gets_no_size_and_one_image_a_call(base_url, fakes):
    png = png_bytes(seed=67)
    async with sdk(base_url) as client:
        result = await client.images.edit(
            model="qwen-image-edit",
            image=("photo.png", png, "image/png"),
            prompt="at night",
            n=2,
            size="1536x1024",
            response_format="url",
        )
    assert len(result.data) == 2
    first, second = fakes.ds.sync_calls
    for edit in (first, second):
        assert edit.json["model"] == "qwen-image-edit"
        assert "size" not in edit.json["parameters"]
        assert edit.json["parameters"]["n"] == 1
        assert fakes.ds.edit_images(edit) == [png]
    # Each call starts at its own seed, or both would make the same picture.
    seeds = sorted(edit.json["parameters"]["seed"] for edit in (first, second))
    assert seeds[1] == seeds[0] + 1


@pytest.mark.gen_test
async def test_dashscope_edits_through_the_openai_sdk_make_n_images_in_one_call(base_url, fakes):
    first, second = png_bytes(seed=68), png_bytes(seed=69)
    async with sdk(base_url) as client:
        result = await client.images.edit(
            model="qwen-image-edit-plus",
            image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
            prompt="put them together",
            n=2,
            size="1536x1024",
        )
    assert len(result.data) == 2
    assert all(base64.b64decode(entry.b64_json)[:4] == b"\x89PNG" for entry in result.data)
    [edit] = fakes.ds.sync_calls
    assert fakes.ds.edit_images(edit) == [first, second]
    assert fakes.ds.edit_text(edit) == "put them together"
    assert (edit.json["parameters"]["n"], edit.json["parameters"]["size"]) == (2, "1536*1024")


@pytest.mark.gen_test
async def test_dashscope_edit_refusals_and_errors_reach_the_client(http_client, base_url, fakes):
    body = with_images("qwen-image-edit-plus", "a hat", data_uri(png_bytes(seed=70)))
    urls = [data_uri(png_bytes(seed=s)) for s in range(4)]
    four = with_images("qwen-image-edit-plus", "a hat", *urls)
    assert_error(await post_chat(http_client, base_url, four), 400, "invalid_image_input")
    assert received(fakes) == 0
    refusal = "Input data may contain inappropriate content."
    fakes.ds.script(
        Answer(400, {"request_id": "r1", "code": "DataInspectionFailed", "message": refusal}),
        Answer(400, {"request_id": "r2", "code": "InvalidParameter", "message": "bad size"}),
        Answer(json={"request_id": "r3", "code": "DataInspectionFailed", "message": refusal}),
        Answer(json={"request_id": "r4", "code": "InternalError", "message": "try later"}),
    )
    error = assert_error(await post_chat(http_client, base_url, body), 400, "upstream_rejected")
    assert refusal in error["message"]
    error = assert_error(await post_chat(http_client, base_url, body), 400, "upstream_rejected")
    assert "bad size" in error["message"]
    # A 200 that carries a code and no output failed all the same (DashScope does that).
    error = assert_error(await post_chat(http_client, base_url, body), 400, "upstream_rejected")
    assert refusal in error["message"]
    error = assert_error(await post_chat(http_client, base_url, body), 502, "upstream_error")
    assert "try later" in error["message"]
    assert len(fakes.ds.sync_calls) == 4 and fakes.ds.tasks == {}


@pytest.mark.gen_test
async def test_a_dashscope_edit_model_without_an_image_sends_the_text_alone(
    http_client, base_url, fakes
):
    # As the other kinds' edit models: the text goes to the model's endpoint, which decides
    # (DashScope wants an image, and says so).
    response = await post_chat(http_client, base_url, chat_body("a hat", model="qwen-image-edit"))
    error = assert_error(response, 400, "upstream_rejected")
    assert "1 to 3 images" in error["message"]
    [sent] = fakes.ds.requests
    assert sent.path.endswith("/multimodal-generation/generation")
    assert sent.json["input"]["messages"][0]["content"] == [{"text": "a hat"}]
    assert fakes.ds.tasks == {}


@pytest.mark.gen_test
async def test_dashscope_wan26_image_gets_the_text_then_its_images_as_a_task(
    http_client, base_url, fakes
):
    pngs = [png_bytes(seed=s) for s in (71, 72)]
    body = with_images("wan2.6-image", "in watercolour, 3:4", *map(data_uri, pngs))
    [link] = await links_of(http_client, base_url, body)
    [submission] = [r for r in fakes.ds.requests if r.method == "POST"]
    assert submission.path == "/api/v1/services/aigc/image-generation/generation"
    assert submission.headers["x-dashscope-async"] == "enable"
    text, *images = submission.json["input"]["messages"][0]["content"]
    assert text == {"text": "in watercolour"}
    assert [base64.b64decode(part["image"].split(",", 1)[1]) for part in images] == pngs
    parameters = submission.json["parameters"]
    assert parameters["enable_interleave"] is False  # images alone, as many as asked
    width, height = (int(side) for side in parameters["size"].split("*"))
    assert abs(width / height - 3 / 4) < 0.02 and width * height <= 1440 * 1440
    # A task, polled until done; the image of its chat-format answer is kept and served.
    assert len(fakes.ds.tasks) == 1 and fakes.ds.polls and fakes.ds.sync_calls == []
    kept = await http_client.fetch(link)
    [made] = fakes.ds.image_urls
    assert kept.body == (await http_client.fetch(made)).body
    five = with_images("wan2.6-image", "x", *(data_uri(png_bytes(seed=s)) for s in range(5)))
    assert_error(await post_chat(http_client, base_url, five), 400, "invalid_image_input")
    assert len(fakes.ds.requests) == 2


@pytest.mark.gen_test
async def test_dashscope_qwen_image_2_takes_images_before_the_text_at_once(
    http_client, base_url, fakes
):
    png = png_bytes(seed=73)
    [link] = await links_of(
        http_client, base_url, with_images("qwen-image-2.0", "a cap", data_uri(png))
    )
    [sent] = fakes.ds.sync_calls
    assert sent.path == "/api/v1/services/aigc/multimodal-generation/generation"
    assert fakes.ds.edit_images(sent) == [png]
    assert fakes.ds.edit_text(sent) == "a cap"
    assert sent.json["parameters"]["size"] == "1024*1024"
    assert fakes.ds.tasks == {}
    await http_client.fetch(link)


@pytest.mark.gen_test
async def test_an_http_link_is_fetched_and_passed(http_client, base_url, fakes):
    png = png_bytes(seed=16)
    fakes.images.serve("photo", png, content_type="application/octet-stream")
    body = with_images("gemini-2.5-flash-image", "at night", fakes.images.url("photo"))
    await links_of(http_client, base_url, body)
    image = fakes.gemini.last().json["contents"][0]["parts"][1]["inlineData"]
    assert base64.b64decode(image["data"]) == png
    assert fakes.images.hits["photo"] == 1


@pytest.mark.gen_test
async def test_the_gateways_own_link_is_read_from_its_store(http_client, base_url, fakes, caplog):
    [link] = await links_of(http_client, base_url, chat_body("a fox", model="gpt-image-1"))
    caplog.set_level(logging.INFO, logger="tornado.access")
    caplog.clear()
    relative = link[len(base_url) :]
    for own in (link, relative, link.replace("127.0.0.1", "gateway.example")):
        await links_of(http_client, base_url, with_images("gemini-2.5-flash-image", "wider", own))
    assert not [r for r in caplog.records if "/image-proxy" in r.getMessage()]
    served = await http_client.fetch(link)
    assert [r for r in caplog.records if "/image-proxy" in r.getMessage()]
    for sent in fakes.gemini.requests:
        image = sent.json["contents"][0]["parts"][1]["inlineData"]
        assert base64.b64decode(image["data"]) == served.body


@pytest.mark.gen_test
async def test_a_model_that_takes_no_images_is_400_before_any_call(http_client, base_url, fakes):
    body = with_images("gemini-text-only", "blue", data_uri(png_bytes(seed=17)))
    response = await post_chat(http_client, base_url, body)
    assert_error(response, 400, "image_input_not_supported")
    assert "gemini-text-only" in json_of(response)["error"]["message"]
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_more_images_than_the_model_takes_is_400(http_client, base_url, fakes):
    urls = [data_uri(png_bytes(seed=s)) for s in range(4)]
    response = await post_chat(
        http_client, base_url, with_images("gemini-2.5-flash-image", "x", *urls)
    )
    assert_error(response, 400, "invalid_image_input")
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_an_image_over_the_byte_limit_is_413(http_client, base_url, fakes):
    big = noise_png_of_size(INPUT_MAX_BYTES + 1, random.Random(3))
    response = await post_chat(
        http_client, base_url, with_images("gpt-image-1", "x", data_uri(big))
    )
    assert_error(response, 413, "image_input_too_large")
    fakes.images.serve("big", big)
    body = with_images("gpt-image-1", "x", fakes.images.url("big"))
    assert_error(await post_chat(http_client, base_url, body), 413, "image_input_too_large")
    assert received(fakes) == 0


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "url",
    [
        "data:image/svg+xml;base64,"
        + base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg"/>').decode(),
        "data:image/png;base64," + base64.b64encode(b"not a png at all").decode(),
        "data:image/png;base64,%%%",
        "data:image/png,rawbytes",
        "ftp://example.com/a.png",
    ],
)
async def test_what_is_not_a_raster_image_is_400(http_client, base_url, fakes, url):
    response = await post_chat(http_client, base_url, with_images("gpt-image-1", "x", url))
    assert_error(response, 400, "invalid_image_input")
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_an_unreachable_or_html_link_is_400(http_client, base_url, fakes):
    fakes.images.serve("page", b"<html>hi</html>", content_type="text/html")
    fakes.images.status("gone", 404)
    for path in ("page", "gone"):
        body = with_images("gpt-image-1", "x", fakes.images.url(path))
        assert_error(await post_chat(http_client, base_url, body), 400, "invalid_image_input")
    assert received(fakes) == 0


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "gateway_env", [{"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "false"}], indirect=True
)
async def test_a_link_to_a_private_address_is_refused(http_client, base_url, fakes):
    fakes.images.serve("photo", png_bytes(seed=18))
    body = with_images("gpt-image-1", "x", fakes.images.url("photo"))
    assert_error(await post_chat(http_client, base_url, body), 400, "invalid_image_input")
    assert fakes.images.hits["photo"] == 0
    assert received(fakes) == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_leaving_while_an_input_loads_stops_the_fetch(
    base_url, http_port, fakes, stream
):
    held = fakes.images.hold("slow.png", png_bytes(seed=19))
    body = with_images("gemini-2.5-flash-image", "at night", fakes.images.url("slow.png"))
    body["stream"] = stream
    before = len(LOG_WATCH.lines)
    try:
        reader, writer = await raw_chat(http_port, body)
        await asyncio.wait_for(held.asked.wait(), 10)
        if stream:  # the role chunk came while the input was still loading
            await asyncio.wait_for(reader.readuntil(b'"role"'), 10)
        writer.close()
        await LOG_WATCH.wait_for("abandoning", since=before)
        # The gateway hung up on the image host: the download no one waits for is stopped.
        await asyncio.wait_for(held.left.wait(), 10)
    finally:
        held.release.set()
    assert received(fakes) == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "gateway_env", [{"IMAGE_GEN_TIMEOUT": "1", "IMAGE_FETCH_TIMEOUT": "30"}], indirect=True
)
async def test_an_input_that_loads_past_the_time_limit_is_a_504(http_client, base_url, fakes):
    held = fakes.images.hold("slow.png", png_bytes(seed=20))
    body = with_images("gemini-2.5-flash-image", "at night", fakes.images.url("slow.png"))
    try:
        response = await post_chat(http_client, base_url, body)
        # The answer came while the image host still held the image: the generation's time
        # limit, not the image fetch's own, ended the wait.
        assert not held.release.is_set()
        assert_error(response, 504, "upstream_timeout")
        await asyncio.wait_for(held.left.wait(), 10)
    finally:
        held.release.set()
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_an_image_under_the_limit_fits_the_chat_body(http_client, base_url, fakes):
    png = noise_png_of_size(INPUT_MAX_BYTES, random.Random(4))
    await links_of(http_client, base_url, with_images("gpt-image-1", "x", data_uri(png)))
    assert fakes.oi.last().files["image"][0][2] == png


@pytest.mark.gen_test
async def test_images_endpoint_limit_is_unchanged(http_client, base_url):
    body = {"model": "gpt-image-1", "prompt": "x" * (5 * 1024 * 1024)}
    response = await call(http_client, base_url, "/v1/images/generations", method="POST", body=body)
    assert_error(response, 413, "request_too_large")


def sdk(base_url: str) -> openai.AsyncOpenAI:
    """The real openai SDK, pointed at the gateway."""
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=CLIENT_KEYS[0], max_retries=0, timeout=30
    )


@pytest.mark.gen_test
async def test_images_edit_through_the_openai_sdk(base_url, fakes):
    png, mask = png_bytes(seed=21), png_bytes(seed=22)
    async with sdk(base_url) as client:
        result = await client.images.edit(
            model="gpt-image-1",
            image=("photo.png", png, "image/png"),
            mask=("mask.png", mask, "image/png"),
            prompt="make this a watercolour",
            n=2,
            size="1536x1024",
        )
    assert len(result.data) == 2
    assert all(base64.b64decode(entry.b64_json)[:4] == b"\x89PNG" for entry in result.data)
    sent = fakes.oi.last()
    assert sent.path == "/v1/images/edits"
    assert sent.json["prompt"] == "make this a watercolour"
    assert (sent.json["n"], sent.json["size"]) == (2, "1536x1024")
    assert sent.files["image"][0][2] == png
    assert sent.files["mask"][0][2] == mask


@pytest.mark.gen_test
async def test_images_edit_with_several_images_and_links(base_url, fakes):
    first, second = png_bytes(seed=23), png_bytes(seed=24)
    async with sdk(base_url) as client:
        result = await client.images.edit(
            model="gemini-2.5-flash-image",
            image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
            prompt="put them together",
            response_format="url",
        )
    assert result.data[0].url.startswith(f"{base_url}/image-proxy?id=")
    parts = fakes.gemini.last().json["contents"][0]["parts"]
    assert [base64.b64decode(p["inlineData"]["data"]) for p in parts[1:]] == [first, second]


@pytest.mark.gen_test
async def test_images_edit_refuses_what_the_model_cannot_take(base_url, fakes):
    async with sdk(base_url) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.edit(
                model="gemini-text-only", image=("a.png", png_bytes(), "image/png"), prompt="x"
            )
        assert refused.value.code == "image_input_not_supported"
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.edit(
                model="gpt-image-1", image=("a.svg", b"<svg/>", "image/png"), prompt="x"
            )
        assert refused.value.code == "invalid_image_input"
        big = noise_png_of_size(INPUT_MAX_BYTES + 1, random.Random(5))
        with pytest.raises(openai.APIStatusError) as refused:
            await client.images.edit(model="gpt-image-1", image=("a.png", big), prompt="x")
        assert refused.value.status_code == 413
        assert refused.value.code == "image_input_too_large"
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_a_mask_is_refused_where_the_provider_has_no_field_for_it(base_url, fakes):
    png, mask = png_bytes(seed=25), png_bytes(seed=26)
    async with sdk(base_url) as client:
        for model in ("gemini-2.5-flash-image", "chat-image-model", "flux-kontext-pro"):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.images.edit(
                    model=model,
                    image=("a.png", png, "image/png"),
                    mask=("m.png", mask, "image/png"),
                    prompt="x",
                )
            assert refused.value.code == "mask_not_supported"
            assert f"'{model}'" in refused.value.message
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_bfl_fill_gets_the_image_and_its_mask(base_url, fakes):
    png, mask = png_bytes(seed=28), png_bytes(seed=29)
    async with sdk(base_url) as client:
        await client.images.edit(
            model="flux-pro-1.0-fill",
            image=("a.png", png, "image/png"),
            mask=("m.png", mask, "image/png"),
            prompt="a boat on the lake",
        )
    [sent] = fakes.bfl.submissions()
    assert sent.path == "/v1/flux-pro-1.0-fill"
    assert sent.json["prompt"] == "a boat on the lake"
    assert base64.b64decode(sent.json["image"]) == png
    assert base64.b64decode(sent.json["mask"]) == mask
    assert not {"input_image", "width", "height", "aspect_ratio"} & set(sent.json)


@pytest.mark.gen_test
async def test_fal_edit_apps_get_data_uris_in_their_own_fields(http_client, base_url, fakes):
    first, second, mask = png_bytes(seed=64), png_bytes(seed=65), png_bytes(seed=66)
    fakes.fal.script_default = TaskScript(pending=0)

    def decoded(uri: str) -> bytes:
        assert uri.startswith("data:image/png;base64,")
        return base64.b64decode(uri.split(",", 1)[1])

    pair = with_images("fal-ai/flux-2/edit", "a hat", data_uri(first), data_uri(second))
    await links_of(http_client, base_url, pair)
    one = with_images("fal-ai/flux-pro/kontext", "a hat", data_uri(first))
    await links_of(http_client, base_url, one)
    async with sdk(base_url) as client:
        await client.images.edit(
            model="fal-ai/flux-lora/inpainting",
            image=("a.png", first, "image/png"),
            mask=("m.png", mask, "image/png"),
            prompt="a boat",
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.edit(
                model="fal-ai/flux-2/edit",
                image=("a.png", first, "image/png"),
                mask=("m.png", mask, "image/png"),
                prompt="a boat",
            )
        assert refused.value.code == "mask_not_supported"
    edit, kontext, inpaint = (sent.json for sent in fakes.fal.submissions())
    assert [decoded(uri) for uri in edit["image_urls"]] == [first, second]
    assert "image_url" not in edit
    assert decoded(kontext["image_url"]) == first
    assert (decoded(inpaint["image_url"]), decoded(inpaint["mask_url"])) == (first, mask)
    text_only = with_images("fal-ai/flux/dev", "a hat", data_uri(first))
    assert_error(
        await post_chat(http_client, base_url, text_only), 400, "image_input_not_supported"
    )
    assert len(fakes.fal.submissions()) == 3
    # Kontext's max multi app, like its multi app, takes a list (as fal's clients send it).
    multi = with_images(
        "fal-ai/flux-pro/kontext/max/multi", "a hat", *map(data_uri, (first, second))
    )
    await links_of(http_client, base_url, multi)
    sent = fakes.fal.submissions()[-1]
    assert sent.path.endswith("/fal-ai/flux-pro/kontext/max/multi")
    assert [decoded(uri) for uri in sent.json["image_urls"]] == [first, second]
    assert "image_url" not in sent.json


@pytest.mark.gen_test
async def test_a_mask_goes_through_the_limits_of_an_input(base_url, fakes):
    png = png_bytes(seed=27)
    async with sdk(base_url) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.edit(
                model="gpt-image-1",
                image=("a.png", png, "image/png"),
                mask=("m.png", b"<svg/>", "image/png"),
                prompt="x",
            )
        assert refused.value.code == "invalid_image_input"
        big = noise_png_of_size(INPUT_MAX_BYTES + 1, random.Random(6))
        with pytest.raises(openai.APIStatusError) as refused:
            await client.images.edit(
                model="gpt-image-1", image=("a.png", png), mask=("m.png", big), prompt="x"
            )
        assert refused.value.status_code == 413
        assert refused.value.code == "image_input_too_large"
    assert received(fakes) == 0


@pytest.mark.gen_test
async def test_an_edit_must_be_a_form_with_an_image(http_client, base_url, fakes):
    as_json = await call(
        http_client, base_url, "/v1/images/edits", method="POST", body={"prompt": "x"}
    )
    assert_error(as_json, 400, "invalid_parameters")
    boundary = "b0undary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    response = await http_client.fetch(
        f"{base_url}/v1/images/edits",
        method="POST",
        body=form,
        headers={
            "Authorization": f"Bearer {CLIENT_KEYS[0]}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        raise_error=False,
    )
    assert_error(response, 400, "invalid_parameters")
    assert received(fakes) == 0


def conversation(model: str, link: str, follow_up: str) -> dict:
    """A chat whose earlier turn made the image at ``link`` (as the gateway wrote it)."""
    return {
        "model": model,
        "messages": [
            {"role": "user", "content": "a red fox in snow"},
            {"role": "assistant", "content": f"![a red fox in snow]({link})"},
            {"role": "user", "content": follow_up},
        ],
    }


@pytest.mark.gen_test
async def test_a_follow_up_passes_the_previous_image_from_the_store(
    http_client, base_url, fakes, app, caplog
):
    model = "gemini-2.5-flash-image"
    [link] = await links_of(http_client, base_url, chat_body("a red fox in snow", model=model))
    service = app.services.generation
    chat = service.read_chat(conversation(model, link, "now make it at night"))
    # As the conversation's follow-up rule marks a message that continues the last image.
    request = dataclasses.replace(service.chat_request(chat), refined=True)
    caplog.set_level(logging.INFO, logger="tornado.access")
    caplog.clear()
    pending = service.input_plan(request, chat.last_user_images(), previous_link(chat))
    await service.generate(request, base_url, pending=pending)
    assert not [r for r in caplog.records if "/image-proxy" in r.getMessage()]
    served = await http_client.fetch(link)
    parts = fakes.gemini.last().json["contents"][0]["parts"]
    assert base64.b64decode(parts[1]["inlineData"]["data"]) == served.body


def gemini_sent(fakes) -> tuple[str, list[bytes], str]:
    """The text, the input images and the aspect ratio of Gemini's last request."""
    sent = fakes.gemini.last().json
    text, *images = sent["contents"][0]["parts"]
    decoded = [base64.b64decode(part["inlineData"]["data"]) for part in images]
    return text["text"], decoded, sent["generationConfig"]["imageConfig"]["aspectRatio"]


def dashscope_sent(fakes) -> tuple[str, list[bytes], str]:
    """The text, the input images and the size of DashScope's last edit."""
    edit = fakes.ds.sync_calls[-1]
    return fakes.ds.edit_text(edit), fakes.ds.edit_images(edit), edit.json["parameters"]["size"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("model", "sent", "shape"),
    [
        ("gemini-2.5-flash-image", gemini_sent, "16:9"),
        ("qwen-image-edit-plus", dashscope_sent, "1024*576"),
    ],
)
async def test_the_fox_follow_up_over_http_sends_the_previous_image_and_the_refined_prompt(
    http_client, base_url, fakes, caplog, model, sent, shape
):
    # The first picture is drawn from text (by Gemini), the follow-up edits it on ``model``.
    first = await post_chat(
        http_client, base_url, chat_body("a red fox in snow, 16:9", model="gemini-2.5-flash-image")
    )
    assert first.code == 200, first.body
    answer = json_of(first)["choices"][0]["message"]["content"]
    [link] = LINK.findall(answer)
    register_secret(link.partition("?")[2])
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": "a red fox in snow, 16:9"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "now make it at night"},
        ],
    }
    caplog.set_level(logging.INFO, logger="tornado.access")
    caplog.clear()
    follow_up = await post_chat(http_client, base_url, body)
    assert follow_up.code == 200, follow_up.body
    # The previous image came from the store: no request reached the gateway's own image proxy.
    assert not [r for r in caplog.records if "/image-proxy" in r.getMessage()]
    text, images, size = sent(fakes)
    assert "fox" in text and "night" in text
    assert size == shape
    served = await http_client.fetch(f"{base_url}/image-proxy?{link.partition('?')[2]}")
    assert images == [served.body]


@pytest.mark.gen_test
async def test_the_users_own_image_wins_over_the_previous_one(http_client, base_url, fakes, app):
    model = "gemini-2.5-flash-image"
    [link] = await links_of(http_client, base_url, chat_body("a red fox", model=model))
    service = app.services.generation
    png = png_bytes(seed=31)
    body = conversation(model, link, "now make it at night")
    body["messages"][-1]["content"] = [
        {"type": "text", "text": "now make it at night"},
        {"type": "image_url", "image_url": {"url": data_uri(png)}},
    ]
    chat = service.read_chat(body)
    request = dataclasses.replace(service.chat_request(chat), refined=True)
    pending = service.input_plan(request, chat.last_user_images(), previous_link(chat))
    request = await service.load_inputs(
        request, pending, deadline=asyncio.get_running_loop().time() + 10
    )
    assert [image.data for image in request.inputs] == [png]


@pytest.mark.gen_test
async def test_a_fresh_topic_or_a_text_only_model_gets_no_previous_image(
    http_client, base_url, fakes
):
    model = "gemini-2.5-flash-image"
    [link] = await links_of(http_client, base_url, chat_body("a red fox", model=model))
    await links_of(http_client, base_url, conversation(model, link, "a blue car"))
    assert fakes.gemini.last().json["contents"][0]["parts"] == [{"text": "a blue car"}]
    text_only = conversation("gemini-text-only", link, "a blue car")
    await links_of(http_client, base_url, text_only)
    assert fakes.gemini.last().json["contents"][0]["parts"] == [{"text": "a blue car"}]


def group_env(kind: str, inputs: str | None = None) -> dict[str, str]:
    """One group of ``kind`` (with ``IMAGE_GEN_INPUTS_1`` when given)."""
    env = {
        "IMAGE_GEN_MODEL_1": "m",
        "IMAGE_GEN_API_BASE_1": "https://api.example.com/v1",
        "IMAGE_GEN_API_KEY_1": "sk-inputs-config-1",
        "IMAGE_GEN_KIND_1": kind,
    }
    if inputs is not None:
        env["IMAGE_GEN_INPUTS_1"] = inputs
    return env


@pytest.mark.parametrize(
    ("kind", "inputs", "takes"),
    [
        ("chat", None, 4),
        ("openai-images", None, 4),
        ("gemini", None, 3),
        ("sd", None, 0),
        ("siliconflow", None, 0),
        ("gemini", "false", 0),
        ("gemini", "true", 3),
        ("siliconflow", "true", 4),
        ("siliconflow", "2", 2),
        ("chat", "9", 4),
        ("chat", "0", 0),
    ],
)
def test_which_groups_take_input_images(kind, inputs, takes):
    settings = load_settings(group_env(kind, inputs))
    group = settings.groups[0]  # then the demo group
    assert group.name == "IMAGE_GEN_1"
    assert group.image_inputs == takes
    expected = f"up to {takes}" if takes else "none"
    assert f"    input images: {expected}" in settings_report(settings).splitlines()


def test_the_report_shows_dashscope_taking_images_for_its_edit_models():
    env = {**group_env("dashscope"), "IMAGE_GEN_MODEL_1": "wan2.2-t2i-flash,qwen-image-edit-plus"}
    settings = load_settings(env)
    group = settings.groups[0]
    assert [group.image_inputs_for(model) for model in group.models] == [0, 3]
    lines = settings_report(settings).splitlines()
    assert "    input images: up to 3" in lines
    assert "    edit masks: none" in lines
    wan26 = load_settings({**env, "IMAGE_GEN_MODEL_1": "wan2.6-t2i,wan2.6-image"})
    assert [
        wan26.groups[0].image_inputs_for(model) for model in ("wan2.6-t2i", "wan2.6-image")
    ] == [
        0,
        4,
    ]
    assert "    input images: up to 4" in settings_report(wan26).splitlines()
    text_only = load_settings({**env, "IMAGE_GEN_MODEL_1": "wan2.2-t2i-flash,qwen-image-plus"})
    assert "    input images: none" in settings_report(text_only).splitlines()


def test_the_report_names_the_models_that_take_an_edit_mask():
    env = {
        **group_env("openai-images"),
        "IMAGE_GEN_MODEL_1": "gpt-image-1,dall-e-2",
        "IMAGE_GEN_MODEL_2": "flux-kontext-pro,flux-pro-1.0-fill",
        "IMAGE_GEN_API_BASE_2": "https://bfl.example.com/v1",
        "IMAGE_GEN_API_KEY_2": "bfl-inputs-config-2",
        "IMAGE_GEN_KIND_2": "bfl",
        **{k.replace("_1", "_3"): v for k, v in group_env("siliconflow").items()},
    }
    lines = settings_report(load_settings(env)).splitlines()
    blocks = "\n".join(lines)
    assert "    edit masks: gpt-image-1, dall-e-2" in lines, blocks
    assert "    edit masks: flux-pro-1.0-fill" in lines, blocks
    # A group that takes no input images has no mask line either.
    siliconflow = blocks[blocks.index("  IMAGE_GEN_3:") :]
    assert "edit masks" not in siliconflow.split("\n  IMAGE_GEN_")[0]


def test_a_wrong_inputs_value_stops_start_up_naming_it():
    with pytest.raises(ConfigError, match="IMAGE_GEN_INPUTS_1"):
        load_settings(group_env("chat", "sometimes"))
