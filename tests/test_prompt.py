"""Reading the optimiser's replies (pure functions); the HTTP path is in test_providers.py."""

from __future__ import annotations

import pytest

from tornado_imagegate.prompt import (
    NON_REASONING_SYSTEM_PROMPT,
    REASONING_SYSTEM_PROMPT,
    clean_reply,
    limit_words,
)


@pytest.mark.parametrize(
    ("content", "reasoning", "prompt", "thinking"),
    [
        ("a cat, ink", "", "a cat, ink", ""),
        ("<think>plan it</think>\na cat, ink", "", "a cat, ink", "plan it"),
        ("<THINK>\nplan\n</THINK>  a cat", "", "a cat", "plan"),
        ("half a plan</think>a cat", "", "a cat", "half a plan"),
        ("a cat", "thought elsewhere", "a cat", "thought elsewhere"),
        ('"a cat, ink"', "", "a cat, ink", ""),
        ("Prompt: a cat,\n ink", "", "a cat, ink", ""),
        ("<think>only thinking</think>", "", "", "only thinking"),
    ],
)
def test_clean_reply(content, reasoning, prompt, thinking):
    assert clean_reply(content, reasoning) == (prompt, thinking)


def test_limit_words():
    assert limit_words("a b c", 5) == "a b c"
    assert limit_words("a, b, c, d", 2) == "a, b"


def test_system_prompts_follow_the_specification():
    for system in (NON_REASONING_SYSTEM_PROMPT, REASONING_SYSTEM_PROMPT):
        assert "English" in system and "50 words" in system and "comma-separated" in system
    assert "<think>" in REASONING_SYSTEM_PROMPT and "</think>" in REASONING_SYSTEM_PROMPT
    assert "<think>" not in NON_REASONING_SYSTEM_PROMPT
