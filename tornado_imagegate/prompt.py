"""Prompt optimisation: an OpenAI-compatible LLM turns a short idea into a strong image prompt."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from tornado_imagegate.config import OptimiserSettings
from tornado_imagegate.errors import UpstreamError
from tornado_imagegate.keys import DEFAULT_POLICY, CooldownPolicy, KeyPool, Outcome, classify
from tornado_imagegate.metrics import Metrics
from tornado_imagegate.providers import json_request
from tornado_imagegate.upstream import Upstream, retry_after_seconds

logger = logging.getLogger(__name__)

MAX_WORDS = 50

# Written for this gateway to the specification of the Flux gateway's two optimiser modes
# (with and without reasoning), not copied from it.
_RULES = """Rules for the prompt you write:
- English only. If the idea is written in another language, understand it and write the prompt
  in English.
- One paragraph of comma-separated phrases, at most 50 words; 30 to 40 is best.
- Lead with the subject and what it is doing, then the artistic style or medium, then the key
  elements of the scene, then, if they help, the lighting and the mood.
- Be specific and vivid. Build on what the person asked for; never replace their idea with
  another one, and keep every detail they gave (names, colours, counts, text to show).
- Answer with the prompt alone: no title, no quotes, no explanation, no markdown."""

NON_REASONING_SYSTEM_PROMPT = f"""You turn a person's short idea for a picture into a prompt for \
a text-to-image model.

{_RULES}"""

REASONING_SYSTEM_PROMPT = f"""You turn a person's short idea for a picture into a prompt for a \
text-to-image model. Think before you write.

First plan inside <think> and </think>:
1. What does the person really want to see? Note every detail they gave.
2. Which artistic style or medium suits it best?
3. The subject, its action, and the scene around it.
4. Composition and framing, lighting, atmosphere: what fits within the word budget.
5. Draft the prompt, count its words, and check it against the rules below.

Then, right after </think>, write the final prompt and nothing else.

{_RULES}"""

_CONVERSATION = """You write the prompt for the next picture of a conversation between a \
person and an image generator. The conversation is given as lines "User: ..." and \
"Assistant: ..."; "[image]" is a picture the generator made, and an "Optimized prompt" or \
"Prompt" line says what it was made from. The last "User:" line is what the person asks now.

If it changes or continues the last picture ("now make it at night", "add a cat", "再加一只猫"), \
write the complete prompt for the new picture: keep everything the conversation established \
(subject, style, scene) unless the person changes it, and apply the change. If the person \
starts a new topic, write a prompt for that alone. The prompt must stand on its own: the image \
model sees nothing of the conversation."""

CONVERSATION_PROMPT = f"""{_CONVERSATION}

{_RULES}"""

REASONING_CONVERSATION_PROMPT = f"""{_CONVERSATION}

Think before you write: plan inside <think> and </think> (does the person continue the last \
picture or start afresh, what stays, what changes), then, right after </think>, write the final \
prompt and nothing else.

{_RULES}"""

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class OptimisedPrompt:
    """The prompt to send to the image model, and what the optimiser thought on the way."""

    prompt: str
    changed: bool
    thinking: str = ""


def clean_reply(content: str, reasoning_content: str = "") -> tuple[str, str]:
    """Split an LLM reply into (prompt, thinking): the text after ``</think>`` is the prompt."""
    thinking = reasoning_content.strip()
    match = None
    for match in _THINK.finditer(content):
        thinking = (thinking + "\n" + match.group(1).strip()).strip()
    prompt = content[match.end() :] if match else content
    if "</think>" in prompt:  # an opening tag cut off by the provider
        before, _, prompt = prompt.rpartition("</think>")
        thinking = (thinking + "\n" + before.strip()).strip()
    prompt = prompt.strip().strip('"“”').strip()
    prompt = re.sub(r"^(?:prompt|output|final prompt)\s*[:：]\s*", "", prompt, flags=re.IGNORECASE)
    return " ".join(prompt.split()), thinking


def limit_words(text: str, limit: int = MAX_WORDS) -> str:
    """Cut a prompt to ``limit`` words, without a dangling comma."""
    words = text.split()
    if len(words) <= limit:
        return text
    return " ".join(words[:limit]).rstrip(",;:")


class PromptOptimiser:
    """Calls the LLM; on any failure the person's own text is used and generation goes on."""

    METRICS_GROUP = "optimiser"

    def __init__(
        self,
        settings: OptimiserSettings,
        upstream: Upstream,
        timeout: float,
        *,
        policy: CooldownPolicy = DEFAULT_POLICY,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.timeout = timeout
        self.metrics = metrics
        self.keys = KeyPool(settings.keys, policy=policy, on_rest=self._rested)
        self.endpoint = settings.endpoint

    def _rested(self, index: int, reason: str) -> None:
        logger.warning("optimiser key #%d rests (%s)", index + 1, reason)
        if self.metrics is not None:
            self.metrics.key_rested(self.METRICS_GROUP, reason)

    @property
    def system_prompt(self) -> str:
        """The system prompt of the configured mode."""
        if self.settings.reasoning:
            return REASONING_SYSTEM_PROMPT
        return NON_REASONING_SYSTEM_PROMPT

    @property
    def conversation_prompt(self) -> str:
        """The system prompt for a conversation's next image, in the configured mode."""
        if self.settings.reasoning:
            return REASONING_CONVERSATION_PROMPT
        return CONVERSATION_PROMPT

    async def optimise(self, text: str) -> OptimisedPrompt:
        """The optimised prompt, or ``text`` itself if the LLM fails, is slow or says nothing."""
        return await self._complete(self.system_prompt, f"Input: {text}\nOutput:", text)

    async def refine(self, turns: str, fallback: str) -> OptimisedPrompt:
        """The complete prompt of a conversation's next image, written from its recent ``turns``;
        ``fallback`` if the LLM fails, is slow or says nothing."""
        return await self._complete(
            self.conversation_prompt, f"Conversation:\n{turns}\nOutput:", fallback
        )

    async def _complete(self, system: str, user: str, text: str) -> OptimisedPrompt:
        """Ask the LLM (keys in turn); ``text`` unchanged on any failure."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        body = {
            "model": self.settings.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        }
        reason = "no key available"
        for index, key in self.keys.order():
            try:
                response = await self.upstream.fetch(
                    json_request(self.endpoint, key, body), deadline
                )
            except UpstreamError as exc:
                outcome = classify(exc)
                self.keys.record_failure(index, outcome)
                reason = exc.kind
                if exc.kind == "timeout" or not outcome.fails_over:
                    break
                continue
            outcome = classify(response.code)
            if outcome is not Outcome.OK:
                self.keys.record_failure(index, outcome, retry_after_seconds(response))
                reason = f"HTTP {response.code}"
                if outcome.fails_over:
                    continue
                break
            self.keys.record_success(index)
            prompt, thinking = self._read(response.body)
            if thinking:
                logger.debug("optimiser thinking: %s", thinking)
            if prompt:
                prompt = limit_words(prompt)
                return OptimisedPrompt(prompt, changed=prompt != text, thinking=thinking)
            reason = "empty reply"
            break
        logger.warning("prompt optimisation failed (%s); using the prompt as written", reason)
        return OptimisedPrompt(text, changed=False)

    @staticmethod
    def _read(body: bytes | None) -> tuple[str, str]:
        try:
            answer: Any = json.loads(body or b"")
            message = answer["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return "", ""
        content = message.get("content") if isinstance(message, dict) else None
        reasoning = message.get("reasoning_content") if isinstance(message, dict) else None
        return clean_reply(
            content if isinstance(content, str) else "",
            reasoning if isinstance(reasoning, str) else "",
        )
