"""Follow-ups: a message that continues the conversation refines the gateway's last image."""

from __future__ import annotations

import pytest
from conftest import json_of, post_chat, register_secret, with_env
from fakes import FakeLLM, FakeSet, FakeSiliconFlow

from tornado_imagegate.conversation import change_of, is_follow_up

SF_KEY = "sf-conversation-key-1212"
LLM_KEY = "llm-conversation-key-3434"
register_secret(SF_KEY, LLM_KEY)
OPTIMISER = {"OPENAI_MODEL": "gpt-test"}
MODEL = "flux-test"
FOX = "a red fox in snow, 16:9"


@pytest.fixture
def fakes(io_loop):
    """A SiliconFlow-type provider (1024 ratio table) and an optimiser LLM."""
    started = FakeSet(sf=FakeSiliconFlow, llm=FakeLLM)
    yield started
    started.close()


@pytest.fixture
def gateway_env(fakes, request):
    """A gateway on the fake provider (and the fake LLM when a test asks for the optimiser)."""
    env = {
        "FLUX_GEN_MODEL": MODEL,
        "FLUX_GEN_API_BASE": fakes.sf.url("v1/images/generations"),
        "FLUX_GEN_API_KEY": SF_KEY,
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGE_GEN_TIMEOUT": "5",
        "LLM_TIMEOUT": "2",
        "OPENAI_API_BASE": fakes.llm.base_url(),
        "OPENAI_API_KEY": LLM_KEY,
    }
    env.update(getattr(request, "param", {}))
    return env


async def say(http_client, base_url, messages):
    """Send the conversation; the assistant's answer (its content) must come back."""
    response = await post_chat(http_client, base_url, {"model": MODEL, "messages": messages})
    assert response.code == 200, response.body
    return json_of(response)["choices"][0]["message"]["content"]


async def converse(http_client, base_url, *user_texts):
    """Each user text in turn, with the gateway's own answers as history; the messages so far."""
    messages = []
    for text in user_texts:
        messages.append({"role": "user", "content": text})
        answer = await say(http_client, base_url, messages)
        messages.append({"role": "assistant", "content": answer})
    return messages


def sent(fakes):
    """What the provider got last: (prompt, size)."""
    body = fakes.sf.last().json
    return body["prompt"], body["image_size"]


@pytest.mark.gen_test
async def test_the_fox_follow_up_refines_the_last_image_at_its_size(http_client, base_url, fakes):
    messages = await converse(http_client, base_url, FOX, "now make it at night")
    assert sent(fakes) == ("a red fox in snow, at night", "1024x576")
    # The answer says which prompt was used, so that the next follow-up builds on it.
    assert messages[-1]["content"].endswith("\n\nPrompt: a red fox in snow, at night")
    assert "/image-proxy?" in messages[-1]["content"]


@pytest.mark.gen_test
async def test_a_chain_of_follow_ups_keeps_building(http_client, base_url, fakes):
    await converse(
        http_client, base_url, "a red fox in snow, 16:9", "now make it at night", "add a full moon"
    )
    assert sent(fakes) == ("a red fox in snow, at night, with a full moon", "1024x576")


@pytest.mark.gen_test
async def test_a_fresh_topic_stays_standalone(http_client, base_url, fakes):
    messages = await converse(http_client, base_url, "a red fox in snow, 16:9", "a blue car")
    assert sent(fakes) == ("a blue car", "1024x1024")
    assert "Prompt:" not in messages[-1]["content"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    ("follow", "prompt", "size"),
    [
        ("same but wider", "a red fox in snow", "1024x576"),
        ("make it taller", "a red fox in snow", "576x1024"),
        ("now make it at night, 9:16", "a red fox in snow, at night", "576x1024"),
        ("再加一只猫", "a red fox in snow, 加上一只猫", "1024x1024"),
        ("换成夜晚", "a red fox in snow, 夜晚", "1024x1024"),
        ("改成水彩风格", "a red fox in snow, 水彩风格", "1024x1024"),
    ],
)
async def test_follow_ups_change_size_and_speak_chinese(
    http_client, base_url, fakes, follow, prompt, size
):
    await converse(http_client, base_url, "a red fox in snow", follow)
    assert sent(fakes) == (prompt, size)


@pytest.mark.gen_test
@with_env({"CONVERSATION_MODE": "standalone"})
async def test_standalone_mode_takes_each_message_alone(http_client, base_url, fakes):
    messages = await converse(http_client, base_url, FOX, "now make it at night")
    assert sent(fakes) == ("now make it at night", "1024x1024")
    assert "Prompt:" not in messages[-1]["content"]


@pytest.mark.gen_test
async def test_no_refine_in_the_message_takes_it_alone(http_client, base_url, fakes):
    await converse(http_client, base_url, FOX, "now make it at night no-refine")
    assert sent(fakes) == ("now make it at night", "1024x1024")


@pytest.mark.gen_test
async def test_only_the_gateways_own_answers_count_as_images(http_client, base_url, fakes):
    messages = [
        {"role": "user", "content": "a red fox in snow, 16:9"},
        {"role": "assistant", "content": "![fox](https://elsewhere.example/fox.png)"},
        {"role": "user", "content": "now make it at night"},
    ]
    await say(http_client, base_url, messages)
    assert sent(fakes) == ("now make it at night", "1024x1024")


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_the_optimiser_writes_the_follow_up_from_the_recent_turns(
    http_client, base_url, fakes
):
    fakes.llm.script(FakeLLM.reply_answer("a red fox standing in deep snow, winter forest"))
    history = await converse(http_client, base_url, "a red fox in snow, 16:9")
    fakes.llm.script(FakeLLM.reply_answer("a red fox in deep snow under a starry night sky"))
    history.append({"role": "user", "content": "now make it at night"})
    content = await say(http_client, base_url, history)
    system, user = fakes.llm.last().json["messages"]
    assert "conversation" in system["content"] and "new topic" in system["content"]
    turns = user["content"]
    assert "User: a red fox in snow, 16:9" in turns
    assert "Optimized prompt: a red fox standing in deep snow, winter forest" in turns
    assert turns.rstrip().endswith("User: now make it at night\nOutput:")
    assert "/image-proxy" not in turns  # the links are no use to it
    assert sent(fakes) == ("a red fox in deep snow under a starry night sky", "1024x576")
    assert content.endswith("Optimized prompt: a red fox in deep snow under a starry night sky")


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_a_failing_optimiser_falls_back_to_the_rule(http_client, base_url, fakes):
    history = await converse(http_client, base_url, "a red fox in snow, 16:9")
    fakes.llm.default = FakeLLM.error_answer(500, "boom")
    history.append({"role": "user", "content": "now make it at night"})
    content = await say(http_client, base_url, history)
    prompt, size = sent(fakes)
    assert prompt == f"{fakes.llm.reply}, at night" and size == "1024x576"
    assert content.endswith(f"Prompt: {prompt}")


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_the_optimisers_recent_turns_are_bounded(http_client, base_url, fakes):
    long_text = "a very detailed castle " * 200
    messages = []
    for index in range(5):
        messages += [
            {"role": "user", "content": f"message {index}: {long_text}"},
            {"role": "assistant", "content": "![x](http://127.0.0.1:1/image-proxy?id=a&sig=b)"},
        ]
    messages.append({"role": "user", "content": "now make it at night"})
    await say(http_client, base_url, messages)
    turns = fakes.llm.last().json["messages"][1]["content"]
    assert "message 0" not in turns and "now make it at night" in turns
    assert len(turns) < 2200


@pytest.mark.parametrize(
    ("text", "change"),
    [
        ("now make it at night", "at night"),
        ("same but wider", "wider"),
        ("make it a watercolour", "a watercolour"),
        ("add a cat", "with a cat"),
        ("OK, make it darker please", "darker"),
        ("再加一只猫", "加上一只猫"),
        ("换成夜晚", "夜晚"),
        ("改成水彩风格", "水彩风格"),
        ("让它更大", "更大"),
        ("can you make the fox bigger", "make the fox bigger"),
        ("is it possible at dawn", "is it possible at dawn"),
    ],
)
def test_the_rule_recognises_follow_ups_and_their_change(text, change):
    assert is_follow_up(text)
    assert change_of(text) == change


@pytest.mark.parametrize(
    "text",
    [
        "a blue car",
        "一辆蓝色的汽车",
        "Now a blue car",
        "draw a dog",
        "a lighthouse on a cliff while it storms",
    ],
)
def test_the_rule_leaves_fresh_topics_alone(text):
    assert not is_follow_up(text)


@pytest.mark.gen_test
async def test_a_top_level_prompt_is_taken_alone(http_client, base_url, fakes):
    history = await converse(http_client, base_url, FOX)
    history.append({"role": "user", "content": "now make it at night"})
    body = {"model": MODEL, "messages": history, "prompt": "now make it at dawn"}
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body
    assert sent(fakes) == ("now make it at dawn", "1024x1024")


@pytest.mark.gen_test
@with_env(OPTIMISER)
async def test_with_the_optimiser_a_fresh_topic_gets_its_fresh_prompt(http_client, base_url, fakes):
    history = await converse(http_client, base_url, FOX)
    fakes.llm.script(FakeLLM.reply_answer("a shiny blue car on a coastal road"))
    history.append({"role": "user", "content": "a blue car"})
    await say(http_client, base_url, history)
    assert fakes.llm.last().json["messages"][1]["content"].startswith("Conversation:\nUser: a red")
    assert sent(fakes) == ("a shiny blue car on a coastal road", "1024x1024")


@pytest.mark.gen_test
async def test_a_streamed_follow_up_refines_too(http_client, base_url, fakes):
    history = await converse(http_client, base_url, FOX)
    history.append({"role": "user", "content": "再加一只猫"})
    body = {"model": MODEL, "messages": history, "stream": True}
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200
    assert "Prompt: a red fox in snow, 加上一只猫" in response.body.decode()
    assert sent(fakes) == ("a red fox in snow, 加上一只猫", "1024x576")
