"""Follow-ups: a chat message that continues the conversation refines the gateway's last image.

Nothing is kept on the server: the previous image's prompt is read back from what the gateway
itself wrote into the assistant message (its ``/image-proxy?`` links and its "Optimized prompt"
or "Prompt" line), and its size from the ratio the person wrote back then.

The rule, without the optimiser: the last user message continues the conversation when it starts
with a follow-up marker (English: now, make it, same, but, add, remove, change, more, less, again,
instead, also, without, wider, taller...; Chinese: 再, 把, 改成, 换成, 加, 去掉, 变成, 让它...) or
refers to the image (it, 它, 这张...). Its change, with the markers taken off, is appended to the
previous prompt; the previous ratio stays unless the follow-up names one ("wider" is 16:9,
"taller" 9:16, "square" 1:1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tornado_imagegate.openai_api import ChatBody, ChatMessage
from tornado_imagegate.sizing import Size, find_ratio, tidy_prompt

# What the optimiser sees of a conversation: the last few messages, within a character budget.
RECENT_MESSAGES = 6
RECENT_CHARS = 2000
# A message points at the previous image when "it" (它, 这张...) comes within its first words.
REFERENCE_WORDS = 5

_OPT_OUT = re.compile(r"(?<![\w-])no[-_ ]refine(?![\w-])", re.IGNORECASE)
_NO_ENHANCE = re.compile(r"(?<![\w-])no[-_ ]enhance(?![\w-])", re.IGNORECASE)
_OWN_IMAGE = re.compile(r"!\[(?:[^\]\\]|\\.)*\]\((?P<link>[^)\s]*/image-proxy\?[^)\s]*)\)")
_PROMPT_LINE = re.compile(r"^\s*(?:Optimized prompt|Prompt)\s*[:：]\s*(?P<prompt>.+?)\s*$", re.M)

# Leading words that carry no change ("ok, now ..."), taken off before the rule looks.
_FILLER = re.compile(
    r"^(?:(?:ok(?:ay)?|great|nice|cool|good|thanks|please|now|then|and|also|so|hmm|yes"
    r"|can\s+you|could\s+you)\b[\s,.!]*"
    r"|(?:好的|不错|很好|谢谢|请|现在|然后|接着|那么)[\s,，。!！]*)+",
    re.IGNORECASE,
)
# Openings that mean "the same image, changed": taken off, what follows is the change.
_MARKER = re.compile(
    r"^(?:same(?:\s+(?:thing|image|picture|one))?(?:\s*,)?(?:\s+but)?"
    r"|but|again|instead"
    r"|(?:make|turn|change|render|redo|draw|show|paint)\s+(?:it|this|that|them|the\s+(?:image|"
    r"picture|photo|scene|one))(?:\s+(?:look|into|to|as|in))?"
    r"|let'?s\s+(?:make|try)(?:\s+it)?|try(?:\s+it)?|this\s+time|keep\s+(?:it|everything)\s+but"
    r"|(?:再来一张|再来|再画|再|把它|把这张|让它|让她|让他|给它|改成|换成|变成|改为|换为|换个|改个)"
    r")[\s,，:：]*",
    re.IGNORECASE,
)
# Openings that are themselves the change: kept ("add a cat" -> "with a cat").
_CHANGE_START = re.compile(
    r"^(?:add|remove|without|with|more|less|no\s+more|change|replace|put|keep|zoom|give"
    r"|make\s+(?:the|her|him|his|its)"
    r"|wider|taller|square|brighter|darker|bigger|smaller|closer|(?:at|in)\s+(?:night|day|dusk|dawn)"
    r")\b|^(?:加|去掉|去除|删掉|删除|添加|增加|更|换|改|放大|缩小)",
    re.IGNORECASE,
)
_REFERS = re.compile(
    r"\b(?:it|its|it's|the same)\b|它|这张|那张|这幅|刚才|上一张|上张", re.IGNORECASE
)
_LEADING_VERB = {"add": "with", "remove": "without", "加": "加上"}
# Words that change only the shape: the ratio they stand for, taken out of the change.
_SHAPE_WORDS = {
    "wider": "16:9",
    "landscape": "16:9",
    "更宽": "16:9",
    "横屏": "16:9",
    "taller": "9:16",
    "portrait": "9:16",
    "更高": "9:16",
    "竖屏": "9:16",
    "square": "1:1",
    "方形": "1:1",
}
_SHAPE = re.compile(
    r"(?:\b(?:make\s+it\s+)?(?:wider|landscape|taller|portrait|square)\b|更宽|横屏|更高|竖屏|方形)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Previous:
    """The gateway's last image in the conversation: the prompt it was made from and its ratio."""

    prompt: str
    ratio: str | None  # "16:9" as the person wrote it; None when nothing was asked for


@dataclass(frozen=True)
class FollowUp:
    """How the last message relates to the previous image, and the prompt that follows from it."""

    previous: Previous
    continues: bool  # what the deterministic rule decided
    prompt: str  # the prompt to make (with the kept ratio written in it, for the size)
    turns: str  # the recent turns, for the optimiser


def opt_out(prompt: str) -> tuple[str, bool]:
    """The prompt without a ``no-refine`` marker, and whether it was there."""
    if not _OPT_OUT.search(prompt):
        return prompt, False
    return tidy_prompt(_OPT_OUT.sub(" ", prompt)), True


def is_follow_up(text: str) -> bool:
    """Whether a message continues the previous image rather than starting afresh."""
    rest = _FILLER.sub("", text.strip())
    opening = " ".join(rest.split()[:REFERENCE_WORDS])  # "it" later on is the scene's own
    return bool(_MARKER.match(rest) or _CHANGE_START.match(rest) or _REFERS.search(opening))


def change_of(text: str) -> str:
    """The change a follow-up asks for, without its markers ("now make it at night": "at night")."""
    rest = _FILLER.sub("", text.strip())
    rest = _MARKER.sub("", rest, count=1)
    rest = re.sub(r"[\s,，]*\b(?:instead|again|please)\b[\s.!]*$", "", rest, flags=re.IGNORECASE)
    words = rest.split(maxsplit=1)
    if words and words[0].lower() in _LEADING_VERB:
        rest = " ".join([_LEADING_VERB[words[0].lower()], *words[1:]])
    elif rest.startswith("加") and not rest.startswith("加上"):
        rest = "加上" + rest[1:]
    return tidy_prompt(rest.rstrip(".!。！"))


def shape_of(text: str, table: dict[str, Size]) -> str | None:
    """The ratio a message names: written ("16:9") or as a word ("wider", "taller", "square")."""
    found = find_ratio(text, table)
    if found is not None:
        return f"{found[0].group('w')}:{found[0].group('h')}"
    word = _SHAPE.search(text)
    if word is None:
        return None
    return _SHAPE_WORDS[word.group(0).lower().split()[-1]]


def follow_up(chat: ChatBody, prompt: str, table: dict[str, Size]) -> FollowUp | None:
    """The follow-up of the last user message (``prompt``), or None when the gateway made no image
    earlier in the conversation."""
    messages = [m for m in chat.messages or () if m is not None]
    previous = previous_image(messages, table)
    if previous is None:
        return None
    turns = recent_turns(messages)
    if not is_follow_up(prompt):
        return FollowUp(previous, continues=False, prompt=prompt, turns=turns)
    change = change_of(prompt)
    shape = shape_of(prompt, table)
    if shape is not None:
        change = tidy_prompt(_SHAPE.sub(" ", change))
    ratio = shape or previous.ratio
    if find_ratio(change, table) is not None:
        ratio = None  # already written in the change
    parts = [previous.prompt, change, ratio or ""]
    return FollowUp(previous, continues=True, prompt=", ".join(p for p in parts if p), turns=turns)


def previous_image(messages: list[ChatMessage], table: dict[str, Size]) -> Previous | None:
    """The gateway's last image in ``messages`` (before the last user message), if any."""
    answers = [i for i, m in enumerate(messages[:-1]) if _is_own_answer(m)]
    if not answers:
        return None
    last = answers[-1]
    written = _PROMPT_LINE.findall(messages[last].text)
    asked = _user_before(messages, last)
    prompt = written[-1] if written else _cleaned(asked, table)
    if not prompt:
        return None
    return Previous(prompt=prompt, ratio=_ratio_of(messages, answers, table))


def _ratio_of(
    messages: list[ChatMessage], answers: list[int], table: dict[str, Size]
) -> str | None:
    """The ratio of the last image: the one its message named, else, for a follow-up, the one
    before it (a chain of follow-ups keeps the first message's ratio)."""
    for index in reversed(answers):
        asked = _user_before(messages, index)
        shape = shape_of(asked, table)
        if shape is not None:
            return shape
        if not is_follow_up(asked):
            return None
    return None


def _is_own_answer(message: ChatMessage) -> bool:
    return message.role == "assistant" and bool(_OWN_IMAGE.search(message.text))


def _user_before(messages: list[ChatMessage], index: int) -> str:
    for message in reversed(messages[:index]):
        if message.role == "user":
            return message.text
    return ""


def _cleaned(text: str, table: dict[str, Size]) -> str:
    """A person's message as the prompt it was: without its ratio and the gateway's markers."""
    text = _NO_ENHANCE.sub(" ", _OPT_OUT.sub(" ", text))
    found = find_ratio(text, table)
    if found is not None:
        text = text[: found[0].start()] + " " + text[found[0].end() :]
    return tidy_prompt(text)


def recent_turns(messages: list[ChatMessage]) -> str:
    """The last few user and assistant messages as ``User: ...`` / ``Assistant: ...`` lines, the
    gateway's image links written as ``[image]``, oldest dropped first past the budget."""
    lines: list[str] = []
    budget = RECENT_CHARS
    chosen = [m for m in messages if m.role in ("user", "assistant") and m.text]
    for message in reversed(chosen[-RECENT_MESSAGES:]):
        text = _OWN_IMAGE.sub("[image]", message.text)
        text = " ".join(text.split())[:budget]
        if not text:
            break
        lines.append(f"{'User' if message.role == 'user' else 'Assistant'}: {text}")
        budget -= len(text)
        if budget <= 0:
            break
    return "\n".join(reversed(lines))
