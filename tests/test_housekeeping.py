"""Clients' housekeeping requests get a short text answer and never reach a provider."""

from __future__ import annotations

import json

import pytest
from conftest import assert_error, chat_body, json_of, post_chat, register_secret, with_env

from tornado_imagegate.housekeeping import is_task_request, task_reply
from tornado_imagegate.openai_api import read_chat

SD_KEY = "sd-task-key-3131"
register_secret(SD_KEY)

OPEN_WEBUI_TITLE = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    "### Guidelines:\n- The title should clearly represent the main theme.\n"
    '### Output:\nJSON format: { "title": "your concise title here" }\n'
    "### Chat History:\n<chat_history>\nUSER: a red fox sleeping in the snow, 16:9\n"
    "ASSISTANT: ![a red fox](http://gw/image-proxy?id=x)\n</chat_history>"
)
OPEN_WEBUI_TAGS = (
    "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history.\n"
    '### Output:\nJSON format: { "tags": ["tag1", "tag2"] }\n<chat_history>\nUSER: a fox'
    "\n</chat_history>"
)
OPEN_WEBUI_FOLLOW_UPS = (
    "### Task:\nSuggest 3-5 relevant follow-up questions.\n### Output:\nJSON format: "
    '{ "follow_ups": ["Question 1?"] }\n<chat_history>\nUSER: a fox\n</chat_history>'
)
NEXTCHAT_TITLE = (
    "Please generate a four to five word title summarizing our conversation without any lead-in, "
    "punctuation, quotation marks, periods, symbols, bold text, or additional text. Remove "
    "enclosing quotation marks."
)
NEXTCHAT_SUMMARY = (
    "Summarize the discussion briefly in 200 words or less to use as a prompt for future context."
)

# The Chinese prompts of the same clients (their zh-CN locales), word for word.
NEXTCHAT_TITLE_ZH = (
    "使用四到五个字直接返回这句话的简要主题，不要解释、不要标点、不要语气词、不要多余文本，"
    "不要加粗，如果没有主题，请直接返回“闲聊”"
)
NEXTCHAT_SUMMARY_ZH = "简要总结一下对话内容，用作后续的上下文提示 prompt，控制在 200 字以内"
LOBECHAT_TITLE_ZH = (
    "user: 一只在雪地里睡觉的红狐狸\n\n请总结上述对话为10个字以内的标题，不需要包含标点符号"
)
CHERRY_TITLE_ZH = (
    "你是一名擅长会话的助理，你需要将用户的会话总结为 10 个字以内的标题，标题语言与用户的首要语言"
    "一致，不要使用标点符号和其他特殊符号"
)


def chat(messages: list[dict[str, str]]):
    """A chat request of these messages, read as the gateway reads one."""
    return read_chat({"model": "Z-Image", "messages": messages})


def conversation(task: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": "a red fox sleeping in the snow, 16:9"},
        {"role": "assistant", "content": "![a red fox](http://gw/image-proxy?id=x)"},
        {"role": "user", "content": task},
    ]


@pytest.mark.parametrize(
    "task",
    [
        OPEN_WEBUI_TITLE,
        OPEN_WEBUI_TAGS,
        OPEN_WEBUI_FOLLOW_UPS,
        NEXTCHAT_TITLE,
        NEXTCHAT_SUMMARY,
        "请根据对话生成一个简短的标题",
        "Generate a short title for this chat",
        NEXTCHAT_TITLE_ZH,
        NEXTCHAT_SUMMARY_ZH,
        LOBECHAT_TITLE_ZH,
        CHERRY_TITLE_ZH,
    ],
)
def test_client_task_prompts_are_recognised(task):
    assert is_task_request(chat(conversation(task)))


@pytest.mark.parametrize(
    "prompt",
    [
        "a poster with the title 'Summer Nights' in neon letters",
        "a book cover: 'How to summarize a conversation'",
        "a cat on a roof, 16:9",
        "### a heading in a painting",
        "an old map titled Task Force",
        "一张海报，标题是“夏夜”，霓虹灯字体",
        "一本书的封面，主题是四季",
        "总结：一只猫在屋顶上",
    ],
)
def test_real_prompts_are_not_tasks(prompt):
    assert not is_task_request(chat(conversation(prompt)))


def test_a_system_message_task_is_recognised():
    messages = [
        {"role": "system", "content": "Generate a concise title for the chat."},
        {"role": "user", "content": "a fox"},
    ]
    assert is_task_request(chat(messages))


def test_replies_take_the_form_the_client_asked_for():
    title = json.loads(task_reply(chat(conversation(OPEN_WEBUI_TITLE))))
    assert title == {"title": "a red fox sleeping in"}
    assert json.loads(task_reply(chat(conversation(OPEN_WEBUI_TAGS))))["tags"]
    assert json.loads(task_reply(chat(conversation(OPEN_WEBUI_FOLLOW_UPS)))) == {"follow_ups": []}
    assert task_reply(chat(conversation(NEXTCHAT_TITLE))) == "a red fox sleeping in"


@pytest.fixture
def gateway_env(sd, request):
    env = {
        "SD_API_KEY": SD_KEY,
        "SD_API_BASE": sd.url("gen"),
        "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
    }
    env.update(getattr(request, "param", {}))
    return env


@pytest.mark.gen_test
@pytest.mark.parametrize("task", [OPEN_WEBUI_TITLE, NEXTCHAT_TITLE, NEXTCHAT_TITLE_ZH])
@pytest.mark.parametrize("stream", [False, True])
async def test_task_requests_never_reach_the_provider(http_client, base_url, sd, task, stream):
    body = {"model": "Z-Image", "messages": conversation(task), "stream": stream}
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200
    if stream:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.body.decode()
        assert "red fox" in text and text.rstrip().endswith("data: [DONE]")
    else:
        content = json_of(response)["choices"][0]["message"]["content"]
        assert "red fox" in content and "![" not in content
    assert sd.requests == []


@pytest.mark.gen_test
@with_env({"ANSWER_TASK_REQUESTS": "false"})
async def test_the_rule_can_be_switched_off(http_client, base_url, sd):
    body = {"model": "Z-Image", "messages": conversation(NEXTCHAT_TITLE)}
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200
    assert len(sd.requests) == 1


@pytest.mark.gen_test
async def test_a_normal_request_still_generates(http_client, base_url, sd):
    response = await post_chat(
        http_client,
        base_url,
        chat_body("a fox", model="Z-Image"),
    )
    assert (
        response.code == 200
        and "![a fox](" in json_of(response)["choices"][0]["message"]["content"]
    )
    assert len(sd.requests) == 1


@pytest.mark.gen_test
async def test_a_task_holding_a_long_chat_history_is_still_answered(http_client, base_url, sd):
    history = "\n".join(
        f"USER: picture number {i}\nASSISTANT: ![x](http://gw/{i})" for i in range(400)
    )
    task = OPEN_WEBUI_TITLE.replace("USER: a red fox sleeping in the snow, 16:9", history)
    assert len(task) > 8000
    body = {"model": "Z-Image", "messages": [{"role": "user", "content": task}]}
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200
    assert json.loads(json_of(response)["choices"][0]["message"]["content"]) == {
        "title": "picture number 0"
    }
    assert sd.requests == []


@pytest.mark.gen_test
async def test_a_task_for_a_model_that_is_not_configured_is_still_a_404(http_client, base_url, sd):
    body = {"model": "no-such-model", "messages": conversation(NEXTCHAT_TITLE)}
    assert_error(await post_chat(http_client, base_url, body), 404, "model_not_found")


@pytest.mark.gen_test
async def test_a_task_is_answered_whatever_its_other_messages_hold(http_client, base_url, sd):
    messages = [
        "not a message",
        {"role": "assistant", "content": {"not": "readable"}},
        *conversation(OPEN_WEBUI_TITLE),
    ]
    body = {"model": "Z-Image", "messages": messages}
    response = await post_chat(http_client, base_url, body)
    assert response.code == 200, response.body
    content = json_of(response)["choices"][0]["message"]["content"]
    assert json.loads(content) == {"title": "a red fox sleeping in"}
    assert sd.requests == []
