"""Key cooldowns and large answers, over HTTP against fake providers that fail, then recover."""

from __future__ import annotations

import os

import pytest
from conftest import LINK, assert_error, chat_body, json_of, post_chat, register_secret, with_env
from fakes import (
    Answer,
    FakeLLM,
    FakeOpenAIImages,
    FakeSet,
    FakeSiliconFlow,
    noise_png,
    png_of_length,
)

ONE_KEY = "cd-one-key-1111"
TWO_KEYS = ("cd-two-key-a-2222", "cd-two-key-b-3333")
OI_KEYS = ("cd-oi-key-a-4444", "cd-oi-key-b-5555")
LLM_KEYS = ("cd-llm-key-a-6666", "cd-llm-key-b-7777")
register_secret(ONE_KEY, *TWO_KEYS, *OI_KEYS, *LLM_KEYS)


@pytest.fixture
def fakes(io_loop):
    """The fake upstreams of one test."""
    started = FakeSet(one=FakeSiliconFlow, two=FakeSiliconFlow, oi=FakeOpenAIImages, llm=FakeLLM)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, request):
    """The gateway's groups, pointed at the fakes (plus what a test adds)."""
    env = {
        "IMAGE_GEN_MODEL_1": "one-key",
        "IMAGE_GEN_API_BASE_1": fakes.one.url("v1/images/generations"),
        "IMAGE_GEN_API_KEY_1": ONE_KEY,
        "IMAGE_GEN_KIND_1": "siliconflow",
        "IMAGE_GEN_MODEL_2": "two-keys",
        "IMAGE_GEN_API_BASE_2": fakes.two.url("v1/images/generations"),
        "IMAGE_GEN_API_KEY_2": ",".join(TWO_KEYS),
        "IMAGE_GEN_KIND_2": "siliconflow",
        "IMAGE_GEN_MODEL_3": "gpt-image-1",
        "IMAGE_GEN_API_BASE_3": fakes.oi.url("v1/images/generations"),
        "IMAGE_GEN_API_KEY_3": ",".join(OI_KEYS),
        "IMAGE_GEN_KIND_3": "openai-images",
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGE_GEN_TIMEOUT": "10",
        "LLM_TIMEOUT": "5",
    }
    extra = getattr(request, "param", {})
    if "OPENAI_MODEL" in extra:
        env.update({"OPENAI_API_BASE": fakes.llm.base_url(), "OPENAI_API_KEY": ",".join(LLM_KEYS)})
    env.update(extra)
    return env


def server_error() -> Answer:
    return FakeSiliconFlow.error_answer(500, "internal error")


def rate_limited(retry_after: str) -> Answer:
    return Answer(
        429,
        {"code": 50603, "message": "rate limited", "data": None},
        headers={"Retry-After": retry_after},
    )


async def chat(http_client, base_url, model: str):
    """A chat completion (no prompt optimisation asked for)."""
    return await post_chat(http_client, base_url, chat_body("a lighthouse", model=model))


# --- a transient failure does not take a provider offline ---


@pytest.mark.gen_test
async def test_one_key_a_500_then_the_next_request_succeeds_at_once(http_client, base_url, fakes):
    fakes.one.script(server_error())
    assert_error(await chat(http_client, base_url, "one-key"), 502, "upstream_error")
    second = await chat(http_client, base_url, "one-key")
    assert second.code == 200, second.body
    assert len(fakes.one.requests) == 2


@pytest.mark.gen_test
async def test_a_provider_wide_500_fails_over_and_rests_neither_key(http_client, base_url, fakes):
    fakes.two.script(server_error(), server_error())
    first = await chat(http_client, base_url, "two-keys")
    assert_error(first, 502, "upstream_error")
    assert sorted(fakes.two.keys_used()) == sorted(TWO_KEYS)  # failover within the request
    for _ in range(2):
        response = await chat(http_client, base_url, "two-keys")
        assert response.code == 200, response.body
    assert sorted(fakes.two.keys_used()[2:]) == sorted(TWO_KEYS)


@pytest.mark.gen_test
@with_env({"KEY_ALLOWED_FAILS": "1"})
async def test_the_last_usable_key_is_never_rested_for_a_500(http_client, base_url, fakes):
    fakes.two.script(server_error(), server_error())
    assert_error(await chat(http_client, base_url, "two-keys"), 502, "upstream_error")
    for _ in range(3):
        response = await chat(http_client, base_url, "two-keys")
        assert response.code == 200, response.body
    later = fakes.two.keys_used()[2:]
    assert len(later) == 3 and len(set(later)) == 1  # one key rests, the other serves


@pytest.mark.gen_test
async def test_three_500s_within_a_minute_rest_a_key_while_another_works(
    http_client, base_url, fakes
):
    failing = TWO_KEYS[0]
    fakes.two.default = Answer(json=fakes.two.default.json, per_key={failing: server_error()})
    for _ in range(10):
        response = await chat(http_client, base_url, "two-keys")
        assert response.code == 200, response.body
    # It starts every other request: tried on the 1st, 3rd and 5th, then resting.
    assert fakes.two.keys_used().count(failing) == 3


# --- rate limits, and the 503 that tells the wait ---


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("gateway_env", "wait"),
    [({}, "300"), ({"KEY_MAX_COOLDOWN_SECONDS": "120"}, "120")],
    indirect=["gateway_env"],
)
async def test_a_retry_after_of_an_hour_rests_the_key_for_the_cap(
    http_client, base_url, fakes, wait
):
    fakes.one.script(rate_limited("3600"))
    refused = await chat(http_client, base_url, "one-key")
    error = assert_error(refused, 503, "upstream_unavailable")
    assert refused.headers["Retry-After"] == wait
    assert f"{wait}s" in error["message"] and "resting" in error["message"]
    assert "x-should-retry" not in refused.headers  # the SDK may retry after the wait
    # Every key rests: the one whose rest ends first is tried anyway, and it has recovered.
    again = await chat(http_client, base_url, "one-key")
    assert again.code == 200, again.body
    assert len(fakes.one.requests) == 2


@pytest.mark.gen_test
async def test_every_key_resting_tries_the_soonest_and_503s_with_the_real_wait(
    http_client, base_url, fakes
):
    soon, late = TWO_KEYS
    fakes.two.default = Answer(
        json=fakes.two.default.json,
        per_key={soon: rate_limited("20"), late: rate_limited("45")},
    )
    first = await chat(http_client, base_url, "two-keys")
    assert_error(first, 503, "upstream_unavailable")
    assert first.headers["Retry-After"] == "20"
    second = await chat(http_client, base_url, "two-keys")
    assert_error(second, 503, "upstream_unavailable")
    assert int(second.headers["Retry-After"]) in (19, 20)
    assert fakes.two.keys_used()[2:] == [soon]  # one call, with the key whose rest ends first


# --- the prompt optimiser follows the same policy ---


@pytest.mark.gen_test
@with_env({"OPENAI_MODEL": "gpt-test"})
async def test_the_optimiser_rests_a_key_that_keeps_failing(http_client, base_url, fakes):
    failing = LLM_KEYS[0]
    fakes.llm.default = Answer(
        json=fakes.llm.default.json, per_key={failing: FakeLLM.error_answer(500, "boom")}
    )
    for _ in range(10):
        response = await chat(http_client, base_url, "one-key")
        assert response.code == 200, response.body
        assert fakes.one.last().json["prompt"] == fakes.llm.reply  # the other key optimised it
    assert fakes.llm.keys_used().count(failing) == 3  # KEY_ALLOWED_FAILS, then resting


# --- large answers ---


@pytest.mark.gen_test
@with_env({"IMAGE_MAX_BYTES": "65536", "KEY_ALLOWED_FAILS": "1"})
async def test_an_answer_over_the_limit_is_502_and_rests_no_key(http_client, base_url, fakes):
    fakes.oi.script(FakeOpenAIImages.b64_answer(png_of_length(600_000)))
    refused = await chat(http_client, base_url, "gpt-image-1")
    error = assert_error(refused, 502, "upstream_error")
    assert "larger than the gateway accepts" in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert len(fakes.oi.requests) == 1  # the other key would get the same answer
    for _ in range(2):
        response = await chat(http_client, base_url, "gpt-image-1")
        assert response.code == 200, response.body
    assert sorted(fakes.oi.keys_used()[1:]) == sorted(OI_KEYS)


@pytest.mark.gen_test
async def test_a_large_answer_is_decoded_in_another_process(http_client, base_url, fakes, app):
    decoder = app.services.generation.providers["IMAGE_GEN_3"].decoder
    before = decoder.offloaded
    small = await chat(http_client, base_url, "gpt-image-1")
    assert small.code == 200, small.body
    assert decoder.offloaded == before  # a few KB: read inline, as ever

    big = noise_png(700, 600)  # 1.3 MB, 1.7 MB of base64
    fakes.oi.script(FakeOpenAIImages.b64_answer(big))
    response = await chat(http_client, base_url, "gpt-image-1")
    assert response.code == 200, response.body
    (link,) = LINK.findall(json_of(response)["choices"][0]["message"]["content"])
    image = await http_client.fetch(link)
    assert image.body == big
    assert decoder.offloaded == before + 1
    assert decoder.last_worker_pid not in (None, os.getpid())
