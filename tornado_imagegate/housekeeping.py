"""Clients' housekeeping requests (titles, tags, follow-ups): answered with text, never an image.

Chat clients send these to whatever model the conversation uses; treated as prompts, each would
cost a paid image. The rule: the last user message (or a system message) reads like one of the
clients' own task prompts:

- Open WebUI: a message starting with ``### Task:`` (titles, tags, follow-ups, queries...);
- NextChat: "... generate a four to five word title ..." and "Summarize the discussion ...";
- LobeChat and others: "generate a (short) title", "summarize the conversation", 标题 / 总结;
- in Chinese: NextChat's "使用四到五个字直接返回这句话的简要主题..." and "简要总结一下对话内容...",
  LobeChat's and Cherry Studio's "...将用户的会话总结为 10 个字以内的标题..." and "...10 字内标题".
"""

from __future__ import annotations

import json
import re

from tornado_imagegate.openai_api import ChatBody

TITLE_WORDS = 5
TITLE_CHARS = 40
_TASK_PATTERNS = [
    re.compile(r"^\s*#{2,3}\s*Task\s*:", re.IGNORECASE),
    re.compile(
        r"\b(?:three|four|five|3|4|5)\s*(?:to|-)\s*(?:five|six|seven|5|6|7)[\s-]*word\s+"
        r"(?:title|summary)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\bgenerate\s+(?:a|an)\s+(?:concise|short|brief|succinct)?\s*"
        r"(?:title|topic name)\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\bsummari[sz]e\s+(?:the|our|this)\s+(?:discussion|conversation|chat)\b", re.IGNORECASE
    ),
    re.compile(
        r"(?:生成|起|取)(?:一个)?(?:简短的|简洁的)?(?:标题|题目)|总结.{0,12}(?:对话|会话|聊天)"
    ),
    re.compile(r"(?:四到五|四至五|[3-5]\s*[到至-]\s*[4-7])个?字.{0,12}(?:主题|标题)|简要主题"),
    re.compile(
        r"(?:会话|对话|聊天)总结为|[0-9一二三四五六七八九十]+\s*个?\s*字(?:以内|内)的?\s*标题"
    ),
]
# One search per text instead of one per pattern (the inline flag keeps IGNORECASE where the
# pattern had it).
_ANY_TASK = re.compile(
    "|".join(
        f"(?i:{p.pattern})" if p.flags & re.IGNORECASE else f"(?:{p.pattern})"
        for p in _TASK_PATTERNS
    )
)
_HISTORY_USER = re.compile(r"^\s*USER:\s*(.+)$", re.MULTILINE)


def is_task_request(chat: ChatBody) -> bool:
    """Whether a chat request is a client's housekeeping task rather than a picture to make."""
    texts = [*chat.texts("system"), chat.last_user_text()]
    return any(_ANY_TASK.search(text) for text in texts)


def task_text(chat: ChatBody) -> str:
    """The text of the task: the last user message."""
    return chat.last_user_text()


def task_reply(chat: ChatBody) -> str:
    """A short, honest answer to a task request, in the form the client asked for."""
    task = task_text(chat)
    title = _title(chat, task)
    lowered = task.lower()
    if task.lstrip().startswith("###") or "json" in lowered:
        if "tag" in lowered:
            return json.dumps({"tags": ["Art", "Image Generation"]})
        if "follow" in lowered:
            return json.dumps({"follow_ups": []})
        if "quer" in lowered:
            return json.dumps({"queries": []})
        if "title" in lowered:
            return json.dumps({"title": title}, ensure_ascii=False)
        return ""
    return title


def _title(chat: ChatBody, task: str) -> str:
    """A few words of the first thing the person asked for."""
    first = ""
    history = _HISTORY_USER.search(task)
    if history:
        first = history.group(1)
    else:
        for text in chat.texts("user"):
            if text and not _ANY_TASK.search(text):
                first = text
                break
    words = re.sub(r"[^\w\s'-]", " ", first).split()
    return " ".join(words[:TITLE_WORDS])[:TITLE_CHARS].strip() or "Image generation"
