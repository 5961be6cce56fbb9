"""Real provider kinds and the optimiser, against fake upstreams speaking their real shapes."""

from __future__ import annotations

import base64

import pytest
from conftest import LINK, assert_error, chat_body, json_of, post_chat, register_secret, with_env
from fakes import (
    Answer,
    FakeChatImages,
    FakeLLM,
    FakeOpenAIImages,
    FakeSD,
    FakeSet,
    FakeSiliconFlow,
    data_uri,
    png_bytes,
)
from pngcheck import png_info

SF_KEYS = ("sf-key-one-1111", "sf-key-two-2222", "sf-key-three-3333")
CHAT_KEYS = ("chat-key-one-4444", "chat-key-two-5555")
OI_KEY = "oi-key-6666"
SD_KEY = "sd-key-7777"
LLM_KEYS = ("llm-key-one-8888", "llm-key-two-9999")
register_secret(*SF_KEYS, *CHAT_KEYS, OI_KEY, SD_KEY, *LLM_KEYS)
OPTIMISER = {"OPENAI_MODEL": "gpt-test"}
REASONING = {"OPENAI_MODEL_REASONING": "thinker-test"}


@pytest.fixture
def fakes(io_loop):
    """The fake providers, image host and LLM."""
    started = FakeSet(
        sf=FakeSiliconFlow, chat=FakeChatImages, oi=FakeOpenAIImages, sd=FakeSD, llm=FakeLLM
    )
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, request):
    """A gateway with every provider kind pointed at the fakes (plus what a test adds)."""
    env = {
        "FLUX_GEN_MODEL": "flux-test",
        "FLUX_GEN_API_BASE": fakes.sf.url("v1/images/generations"),
        "FLUX_GEN_API_KEY": ",".join(SF_KEYS),
        "IMAGE_GEN_MODEL_1": "chat-test",
        "IMAGE_GEN_API_BASE_1": fakes.chat.url("v1/chat/completions"),
        "IMAGE_GEN_API_KEY_1": ",".join(CHAT_KEYS),
        "IMAGE_GEN_MODEL_2": "dall-e-3,gpt-image-1,compat-images",
        "IMAGE_GEN_API_BASE_2": fakes.oi.url("v1/images/generations"),
        "IMAGE_GEN_API_KEY_2": OI_KEY,
        "IMAGE_GEN_KIND_2": "openai-images",
        "SD_API_KEY": SD_KEY,
        "SD_API_BASE": fakes.sd.url("api/v1/generate_image"),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGE_GEN_TIMEOUT": "5",
        "LLM_TIMEOUT": "2",
    }
    extra = getattr(request, "param", {})
    if "OPENAI_MODEL" in extra or "OPENAI_MODEL_REASONING" in extra:
        env.update({"OPENAI_API_BASE": fakes.llm.base_url(), "OPENAI_API_KEY": ",".join(LLM_KEYS)})
    env.update(extra)
    return env


async def generate(http_client, base_url, model, prompt="a cat on a roof, 16:9", **extra):
    """A chat completion that must succeed: (content, links)."""
    response = await post_chat(
        http_client,
        base_url,
        chat_body(prompt, model=model, **extra),
    )
    assert response.code == 200, response.body
    content = json_of(response)["choices"][0]["message"]["content"]
    return content, LINK.findall(content)


async def fetch_png(http_client, link):
    """The image behind a gateway link; it must be a PNG."""
    response = await http_client.fetch(link, raise_error=False)
    assert response.code == 200, response.body
    png_info(response.body)
    return response.body


def expire_everything(fakes):
    """The provider's temporary links all die."""
    for path in list(fakes.images.routes):
        fakes.images.status(path, 404)


# --- SiliconFlow-type ---


@pytest.mark.gen_test
async def test_siliconflow_gets_the_exact_body(http_client, base_url, fakes):
    await generate(http_client, base_url, "flux-test", seed=42, negative_prompt="blurry", cfg=3.5)
    sent = fakes.sf.last()
    assert sent.path == "/v1/images/generations"
    assert sent.key in SF_KEYS
    assert sent.json == {
        "model": "flux-test",
        "prompt": "a cat on a roof",
        "image_size": "1024x576",
        "num_inference_steps": 50,
        "seed": 42,
        "negative_prompt": "blurry",
        "guidance_scale": 3.5,
    }


@pytest.mark.gen_test
@pytest.mark.parametrize("seed", [100, None])
async def test_each_image_of_a_request_gets_its_own_seed(http_client, base_url, fakes, seed):
    extra = {} if seed is None else {"seed": seed}
    _, links = await generate(http_client, base_url, "Z-Image", "a fox", n=3, **extra)
    assert len(links) == 3
    seeds = sorted(request.json["seed"] for request in fakes.sd.requests)
    first = seeds[0] if seed is None else seed
    assert seeds == [first, first + 1, first + 2]
    # SiliconFlow makes up to four a call: five images are two calls, seeds 7 and 7 + 4.
    await generate(http_client, base_url, "flux-test", "a fox", n=5, seed=7)
    assert sorted(r.json["seed"] for r in fakes.sf.requests) == [7, 11]


@pytest.mark.gen_test
async def test_seed_is_random_unless_given(http_client, base_url, fakes):
    for _ in range(3):
        await generate(http_client, base_url, "flux-test", "a fox")
    seeds = [r.json["seed"] for r in fakes.sf.requests]
    assert len(set(seeds)) == 3
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert all(
        r.json["image_size"] == "1024x1024" and r.json["prompt"] == "a fox"
        for r in fakes.sf.requests
    )


@pytest.mark.gen_test
@pytest.mark.parametrize("shape", ["images", "data_url", "b64"])
async def test_siliconflow_answer_shapes_give_links_that_outlive_the_provider(
    http_client, base_url, fakes, shape
):
    image = png_bytes(48, seed=77)
    url = fakes.images.url("sf-custom.png")
    fakes.images.serve("sf-custom.png", image)
    answers = {
        "images": FakeSiliconFlow.images_answer(url),
        "data_url": FakeSiliconFlow.data_urls_answer(url),
        "b64": FakeSiliconFlow.b64_answer(image),
    }
    fakes.sf.script(answers[shape])
    _, links = await generate(http_client, base_url, "flux-test")
    assert len(links) == 1 and links[0].startswith(base_url + "/image-proxy?")
    expire_everything(fakes)
    assert await fetch_png(http_client, links[0]) == image


@pytest.mark.gen_test
async def test_n_images_in_one_batch_request(http_client, base_url, fakes):
    _content, links = await generate(http_client, base_url, "flux-test", n=3)
    assert len(fakes.sf.requests) == 1
    assert fakes.sf.last().json["batch_size"] == 3
    assert len(set(links)) == 3
    for link in links:
        await fetch_png(http_client, link)


@pytest.mark.gen_test
async def test_sizes_siliconflow_cannot_make_map_to_the_nearest(http_client, base_url, fakes):
    await generate(http_client, base_url, "flux-test", "a wide valley", width=1500, height=700)
    assert fakes.sf.last().json["image_size"] == "1024x576"


SF_QWEN_AND_KOLORS = {"FLUX_GEN_MODEL": "Qwen/Qwen-Image,Qwen/Qwen-Image-Edit,Kwai-Kolors/Kolors"}


@pytest.mark.gen_test
@with_env(SF_QWEN_AND_KOLORS)
async def test_siliconflow_qwen_image_gets_cfg_its_own_sizes_and_one_image_a_call(
    http_client, base_url, fakes
):
    _, links = await generate(http_client, base_url, "Qwen/Qwen-Image", n=2, seed=5, cfg=30)
    assert len(links) == 2
    bodies = sorted((r.json for r in fakes.sf.requests), key=lambda body: body["seed"])
    assert [body["seed"] for body in bodies] == [5, 6]
    for body in bodies:
        assert "batch_size" not in body and "guidance_scale" not in body
        assert body["cfg"] == 20
        assert body["image_size"] == "1664x928"


@pytest.mark.gen_test
@with_env(SF_QWEN_AND_KOLORS)
async def test_siliconflow_kolors_batches_with_guidance_scale(http_client, base_url, fakes):
    _, links = await generate(http_client, base_url, "Kwai-Kolors/Kolors", n=3, cfg=7.5)
    assert len(links) == 3
    [sent] = fakes.sf.requests
    assert sent.json["batch_size"] == 3
    assert sent.json["guidance_scale"] == 7.5
    assert "cfg" not in sent.json


@pytest.mark.gen_test
@with_env(SF_QWEN_AND_KOLORS)
async def test_siliconflow_edit_model_is_sent_no_image_size(http_client, base_url, fakes):
    png = png_bytes(seed=12)
    parts = [
        {"type": "text", "text": "a hat"},
        {"type": "image_url", "image_url": {"url": data_uri(png)}},
    ]
    body = chat_body(parts, model="Qwen/Qwen-Image-Edit")
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body
    sent = fakes.sf.last().json
    assert "image_size" not in sent
    assert base64.b64decode(sent["image"].split(",", 1)[1]) == png


# --- direct groups: chat kind ---


@pytest.mark.gen_test
async def test_chat_kind_gets_the_seed_body_with_the_ratio_in_words(http_client, base_url, fakes):
    await generate(http_client, base_url, "chat-test")
    sent = fakes.chat.last()
    assert sent.key in CHAT_KEYS
    assert sent.json == {
        "model": "chat-test",
        "messages": [{"role": "user", "content": "a cat on a roof, aspect ratio 16:9"}],
        "stream": False,
    }


@pytest.mark.gen_test
@with_env(
    {
        "IMAGE_GEN_EXTRA_1": '{"modalities": ["image", "text"], "stream": true}',
        "IMAGE_GEN_EXTRA_2": '{"quality": "high", "n": 5, "moderation": "low"}',
    }
)
async def test_extra_fields_join_a_synchronous_kinds_body_without_replacing_its_own(
    http_client, base_url, fakes
):
    await generate(http_client, base_url, "chat-test")
    chat = fakes.chat.last().json
    assert chat["modalities"] == ["image", "text"]  # OpenRouter's way to ask for an image
    assert chat["stream"] is False  # the gateway's own field stays
    await generate(http_client, base_url, "compat-images")
    images = fakes.oi.last().json
    assert images["quality"] == "high" and images["moderation"] == "low"
    assert images["n"] == 1


def _chat_shapes(fakes, image_url, image):
    return {
        "markdown": FakeChatImages.content_answer(f"Here you go:\n\n![result]({image_url})"),
        "bare_url": FakeChatImages.content_answer(f"Your image: {image_url} enjoy."),
        "data_uri": FakeChatImages.content_answer(f"![x]({data_uri(image)})"),
        "raw_bytes": FakeChatImages.raw_image_answer(image),
        "data_list": FakeChatImages.data_answer(urls=[image_url]),
        "b64_list": FakeChatImages.data_answer(pngs=[image]),
        "message_images": FakeChatImages.message_images_answer(image_url),
        "message_images_data": FakeChatImages.message_images_answer(data_uri(image)),
    }


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "shape",
    [
        "markdown",
        "bare_url",
        "data_uri",
        "raw_bytes",
        "data_list",
        "b64_list",
        "message_images",
        "message_images_data",
    ],
)
async def test_chat_kind_answer_shapes(http_client, base_url, fakes, shape):
    image = png_bytes(40, seed=5)
    fakes.images.serve("chat.png", image)
    fakes.chat.script(_chat_shapes(fakes, fakes.images.url("chat.png"), image)[shape])
    content, links = await generate(http_client, base_url, "chat-test")
    assert len(links) == 1
    assert "base64" not in content and fakes.images.url("chat.png") not in content
    expire_everything(fakes)
    assert await fetch_png(http_client, links[0]) == image


@pytest.mark.gen_test
async def test_chat_kind_bare_links_count_only_if_they_are_images(http_client, base_url, fakes):
    image = png_bytes(36, seed=6)
    fakes.images.serve("terms", b"<html>terms</html>", content_type="text/html")
    fakes.images.serve("pic.png", image)
    fakes.chat.script(
        FakeChatImages.content_answer(
            f"See {fakes.images.url('terms')} first. Your picture: {fakes.images.url('pic.png')}."
        )
    )
    _content, links = await generate(http_client, base_url, "chat-test")
    assert len(links) == 1
    assert await fetch_png(http_client, links[0]) == image
    fakes.chat.script(FakeChatImages.content_answer(f"Only words: {fakes.images.url('terms')}"))
    response = await post_chat(http_client, base_url, chat_body(model="chat-test"))
    assert_error(response, 502, "upstream_error")


@pytest.mark.gen_test
async def test_chat_kind_answer_without_an_image_is_502(http_client, base_url, fakes):
    fakes.chat.script(FakeChatImages.content_answer("I cannot draw that."))
    response = await post_chat(
        http_client,
        base_url,
        chat_body(model="chat-test"),
    )
    error = assert_error(response, 502, "upstream_error")
    assert "IMAGE_GEN_1" in error["message"]


# --- OpenAI Images kind ---


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("model", "prompt", "size", "response_format"),
    [
        ("dall-e-3", "a cat, 16:9", "1792x1024", "b64_json"),
        ("dall-e-3", "a cat, 9:16", "1024x1792", "b64_json"),
        ("gpt-image-1", "a cat, 3:2", "1536x1024", None),
        ("compat-images", "a cat, 16:9", "1024x576", "b64_json"),
    ],
)
async def test_openai_images_requests(
    http_client, base_url, fakes, model, prompt, size, response_format
):
    _, links = await generate(http_client, base_url, model, prompt)
    sent = fakes.oi.last().json
    assert sent["model"] == model and sent["prompt"] == "a cat" and sent["n"] == 1
    assert sent["size"] == size
    assert sent.get("response_format") == response_format
    await fetch_png(http_client, links[0])


@pytest.mark.gen_test
async def test_dall_e_3_makes_one_image_a_request(http_client, base_url, fakes):
    _, links = await generate(http_client, base_url, "dall-e-3", n=2)
    assert [r.json["n"] for r in fakes.oi.requests] == [1, 1]
    assert len(set(links)) == 2


@pytest.mark.gen_test
async def test_openai_images_url_answer_is_kept(http_client, base_url, fakes):
    image = png_bytes(30, seed=8)
    fakes.images.serve("oi.png", image)
    fakes.oi.script(FakeOpenAIImages.url_answer(fakes.images.url("oi.png")))
    _, links = await generate(http_client, base_url, "compat-images")
    expire_everything(fakes)
    assert await fetch_png(http_client, links[0]) == image


# --- SD / Z-Image ---


@pytest.mark.gen_test
async def test_sd_gets_seed_004s_exact_body(http_client, base_url, fakes):
    _, links = await generate(
        http_client,
        base_url,
        "Z-Image",
        "一只可爱的小狗，16：9",
        seed=123,
        negative_prompt="lowres",
    )
    sent = fakes.sd.last()
    assert sent.key == SD_KEY
    assert sent.path == "/api/v1/generate_image"
    assert sent.json == {
        "prompt": "一只可爱的小狗",
        "width": 2048,
        "height": 1152,
        "steps": 8,
        "cfg": 7.0,
        "model_index": 5,
        "seed": 123,
        "negative_prompt": "lowres",
    }
    expire_everything(fakes)
    await fetch_png(http_client, links[0])


@pytest.mark.gen_test
@with_env({"SD_STEPS": "20", "SD_MODEL_INDEX": "2"})
async def test_sd_steps_and_model_index_are_configurable(http_client, base_url, fakes):
    await generate(http_client, base_url, "Z-Image", "a dog", width=640, height=480, cfg=4.0)
    sent = fakes.sd.last().json
    assert (sent["steps"], sent["model_index"], sent["cfg"]) == (20, 2, 4.0)
    assert (sent["width"], sent["height"]) == (640, 480)
    assert "negative_prompt" not in sent


@pytest.mark.gen_test
@pytest.mark.parametrize("field", ["error", "message"])
async def test_sd_success_false_is_502_with_its_reason(http_client, base_url, fakes, field):
    fakes.sd.script(FakeSD.failure_answer("model is busy", field=field))
    response = await post_chat(
        http_client,
        base_url,
        chat_body(model="Z-Image"),
    )
    error = assert_error(response, 502, "upstream_error")
    assert "model is busy" in error["message"] and "SD" in error["message"]
    assert len(fakes.sd.requests) == 1


# --- keys: rotation, failover, cooldown ---


@pytest.mark.gen_test
async def test_the_starting_key_rotates_from_request_to_request(http_client, base_url, fakes):
    for _ in range(6):
        await generate(http_client, base_url, "flux-test", "a bird")
    used = fakes.sf.keys_used()
    assert set(used[:3]) == set(SF_KEYS)
    assert used[:3] == used[3:]


@pytest.mark.gen_test
async def test_429_fails_over_and_the_key_rests_for_retry_after(http_client, base_url, fakes):
    limited = SF_KEYS[0]
    success = fakes.sf.default
    fakes.sf.default = Answer(
        json=success.json,
        per_key={
            limited: Answer(
                status=429,
                json={"code": 50603, "message": "rate limited", "data": None},
                headers={"Retry-After": "60"},
            )
        },
    )
    for _ in range(6):
        _content, links = await generate(http_client, base_url, "flux-test", "a bird")
        assert len(links) == 1
    assert fakes.sf.keys_used().count(limited) == 1  # tried once, then resting for 60 s


@pytest.mark.gen_test
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_fail_over_to_the_next_key(http_client, base_url, fakes, status):
    fakes.sf.script(FakeSiliconFlow.error_answer(status, "overloaded"))
    _, links = await generate(http_client, base_url, "flux-test")
    assert len(links) == 1
    used = fakes.sf.keys_used()
    assert len(used) == 2 and used[0] != used[1]


@pytest.mark.gen_test
async def test_401_takes_the_key_out(http_client, base_url, fakes):
    revoked = CHAT_KEYS[1]
    fakes.chat.default = Answer(
        json=fakes.chat.default.json,
        per_key={revoked: FakeChatImages.error_answer(401, "Incorrect API key provided")},
    )
    for _ in range(5):
        await generate(http_client, base_url, "chat-test")
    assert fakes.chat.keys_used().count(revoked) == 1


@pytest.mark.gen_test
async def test_a_refused_prompt_is_400_and_burns_no_other_key(http_client, base_url, fakes):
    fakes.sf.script(
        FakeSiliconFlow.error_answer(
            400, f"prompt violates the content policy (request key {SF_KEYS[0]})"
        )
    )
    response = await post_chat(
        http_client,
        base_url,
        chat_body(model="flux-test"),
    )
    error = assert_error(response, 400, "upstream_rejected")
    assert "content policy" in error["message"]
    assert all(key not in error["message"] for key in SF_KEYS)
    assert len(fakes.sf.requests) == 1


@pytest.mark.gen_test
async def test_every_key_failing_is_502_naming_the_group_never_a_key(http_client, base_url, fakes):
    fakes.sf.default = FakeSiliconFlow.error_answer(503, f"down; your key {SF_KEYS[2]}")
    response = await post_chat(
        http_client,
        base_url,
        chat_body(model="flux-test"),
    )
    error = assert_error(response, 502, "upstream_error")
    assert "FLUX_GEN" in error["message"] and "503" in error["message"]
    assert all(key not in response.body.decode() for key in SF_KEYS)
    assert response.headers["x-should-retry"] == "false"
    assert sorted(fakes.sf.keys_used()) == sorted(SF_KEYS)
    again = await post_chat(
        http_client,
        base_url,
        chat_body(model="flux-test"),
    )
    # One failure of each key rests none (KEY_ALLOWED_FAILS): every key is tried again.
    assert "503" in assert_error(again, 502, "upstream_error")["message"]
    assert sorted(fakes.sf.keys_used()[3:]) == sorted(SF_KEYS)


@pytest.mark.gen_test
@with_env({"IMAGE_GEN_TIMEOUT": "1"})
async def test_a_hanging_provider_is_504_in_time(http_client, base_url, fakes):
    fakes.sd.default = Answer(hang=True)
    response = await post_chat(
        http_client,
        base_url,
        chat_body(model="Z-Image"),
    )
    error = assert_error(response, 504, "upstream_timeout")
    assert "SD" in error["message"]
    assert response.headers["x-should-retry"] == "false"


# --- the prompt optimiser ---


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_optimised_prompt_reaches_the_provider_and_the_answer(http_client, base_url, fakes):
    content, links = await generate(http_client, base_url, "flux-test", "一只猫在屋顶上，16:9")
    asked = fakes.llm.last()
    assert asked.key in LLM_KEYS and asked.path == "/v1/chat/completions"
    system, user = asked.json["messages"]
    assert system["role"] == "system" and "English" in system["content"]
    assert "50 words" in system["content"]
    assert user == {"role": "user", "content": "Input: 一只猫在屋顶上\nOutput:"}
    assert asked.json["model"] == "gpt-test"
    assert fakes.sf.last().json["prompt"] == fakes.llm.reply
    assert fakes.sf.last().json["image_size"] == "1024x576"
    assert content == f"![一只猫在屋顶上]({links[0]})\n\nOptimized prompt: {fakes.llm.reply}"


@pytest.mark.gen_test
@with_env(REASONING)
async def test_reasoning_mode_keeps_only_what_follows_the_thinking(http_client, base_url, fakes):
    fakes.llm.script(
        FakeLLM.think_answer(
            "The person wants a cat. Style: ink.",
            "a cat in ink wash style, misty roofs, soft dawn light",
        )
    )
    content, _ = await generate(http_client, base_url, "flux-test")
    assert "<think>" in fakes.llm.last().json["messages"][0]["content"]
    assert fakes.sf.last().json["prompt"] == "a cat in ink wash style, misty roofs, soft dawn light"
    assert "Style: ink" not in content
    assert content.endswith(
        "Optimized prompt: a cat in ink wash style, misty roofs, soft dawn light"
    )


@pytest.mark.gen_test
@with_env(REASONING)
async def test_reasoning_content_field_is_understood(http_client, base_url, fakes):
    fakes.llm.script(
        FakeLLM.reply_answer(
            "a red kite over green hills, watercolour",
            reasoning_content="Let me think about kites...",
        )
    )
    content, _ = await generate(http_client, base_url, "flux-test")
    assert fakes.sf.last().json["prompt"] == "a red kite over green hills, watercolour"
    assert "think about" not in content


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_optimised_prompt_is_cut_to_50_words(http_client, base_url, fakes):
    fakes.llm.script(FakeLLM.reply_answer(", ".join(f"word{i}" for i in range(80))))
    await generate(http_client, base_url, "flux-test")
    assert len(fakes.sf.last().json["prompt"].split()) == 50


@pytest.mark.gen_test
@with_env(OPTIMISER)
@pytest.mark.parametrize(
    "failure",
    [
        FakeLLM.error_answer(500, "boom"),
        FakeLLM.error_answer(400, "bad model"),
        Answer(body=b"not json", content_type="text/plain"),
        FakeLLM.reply_answer("   "),
        Answer(hang=True),
    ],
    ids=["5xx", "4xx", "not-json", "empty", "timeout"],
)
async def test_optimiser_failures_fall_back_to_the_users_text(
    http_client, base_url, fakes, failure
):
    fakes.llm.default = failure
    content, links = await generate(http_client, base_url, "flux-test", "a quiet harbour, 3:2")
    assert fakes.sf.last().json["prompt"] == "a quiet harbour"
    assert "Optimized prompt" not in content
    assert len(links) == 1


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_optimiser_keys_are_tried_in_turn(http_client, base_url, fakes):
    fakes.llm.default = Answer(
        json=fakes.llm.default.json,
        per_key={LLM_KEYS[0]: FakeLLM.error_answer(401, "bad key")},
    )
    for _ in range(2):
        await generate(http_client, base_url, "flux-test")
        assert fakes.sf.last().json["prompt"] == fakes.llm.reply
    assert LLM_KEYS[1] in fakes.llm.keys_used()


@pytest.mark.gen_test
@with_env(OPTIMISER)
@pytest.mark.parametrize(
    ("prompt", "extra"), [("a calm sea", {"enhance": False}), ("a calm sea no-enhance", {})]
)
async def test_optimisation_can_be_skipped(http_client, base_url, fakes, prompt, extra):
    content, _ = await generate(http_client, base_url, "flux-test", prompt, **extra)
    assert fakes.llm.requests == []
    assert fakes.sf.last().json["prompt"] == "a calm sea"
    assert "Optimized prompt" not in content
