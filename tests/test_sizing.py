"""Ratio tables, ratios written in prompts, and explicit sizes (pure functions)."""

from __future__ import annotations

import pytest

from tornado_imagegate import errors
from tornado_imagegate.openai_api import image_request, markdown_image
from tornado_imagegate.sizing import RATIOS_1024, RATIOS_2048, extract_ratio, parse_size

SEED_000_TABLE = {
    "1:1": (1024, 1024),
    "1:2": (512, 1024),
    "3:2": (768, 512),
    "3:4": (768, 1024),
    "16:9": (1024, 576),
    "9:16": (576, 1024),
}
SEED_004_TABLE = {
    "1:1": (2048, 2048),
    "1:2": (1024, 2048),
    "3:2": (1920, 1280),
    "3:4": (1536, 2048),
    "16:9": (2048, 1152),
    "9:16": (1152, 2048),
}


def test_tables_are_the_seeds_tables():
    assert RATIOS_1024 == SEED_000_TABLE
    assert RATIOS_2048 == SEED_004_TABLE


@pytest.mark.parametrize("kind", ["siliconflow", "chat", "openai-images", "demo"])
@pytest.mark.parametrize(("ratio", "size"), SEED_000_TABLE.items())
def test_1024_based_kinds_use_the_seed_000_table(kind, ratio, size):
    request = image_request({}, "m", f"a cat, {ratio}", kind)
    assert (request.width, request.height) == size
    assert request.prompt == "a cat"


@pytest.mark.parametrize(("ratio", "size"), SEED_004_TABLE.items())
def test_sd_kind_uses_the_2048_table(ratio, size):
    request = image_request({}, "Z-Image", f"a cat，{ratio.replace(':', '：')}", "sd")
    assert (request.width, request.height) == size
    assert request.prompt == "a cat"


def test_default_sizes_without_a_ratio():
    assert image_request({}, "m", "a cat", "siliconflow").size == "1024x1024"
    assert image_request({}, "m", "a cat", "sd").size == "2048x2048"


@pytest.mark.parametrize(
    "prompt",
    [
        "meet at 10:30 in the park",
        "the clock strikes 12:00",
        "at 7:45pm a dog",
        "bible verse john 3:16",
        "score 2:1:0 at half time",
    ],
)
def test_times_and_other_pairs_are_not_ratios(prompt):
    cleaned, size = extract_ratio(prompt, RATIOS_1024)
    assert size is None
    assert cleaned == prompt


@pytest.mark.parametrize(
    ("prompt", "cleaned", "size"),
    [
        ("a cat on a roof, 16:9", "a cat on a roof", (1024, 576)),
        ("a cat on a roof 16 : 9", "a cat on a roof", (1024, 576)),
        ("16:9, a cat on a roof", "a cat on a roof", (1024, 576)),
        ("a cat, ratio 9:16, at night", "a cat, at night", (576, 1024)),
        ("一只猫，16：9", "一只猫", (1024, 576)),
        ("a wide valley 21:9", "a wide valley", (1024, 448)),
        ("a portrait 2:3", "a portrait", (704, 1024)),
        ("a cat 16:9 then 1:1", "a cat then 1:1", (1024, 576)),
    ],
)
def test_ratio_is_found_and_removed(prompt, cleaned, size):
    assert extract_ratio(prompt, RATIOS_1024) == (cleaned, size)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024x768", (1024, 768)),
        ("512X512", (512, 512)),
        ("10x5000", (64, 2048)),
        (" 800 x 600 ", (800, 600)),
        ("big", None),
        ("1024", None),
        ("-5x10", None),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_seed_is_random_unless_given_and_fields_are_carried():
    body = {"seed": 42, "cfg": 4.5, "negative_prompt": " blurry ", "n": 2}
    request = image_request(body, "m", "a cat", "sd")
    assert (request.seed, request.seed_given, request.cfg) == (42, True, 4.5)
    assert request.negative_prompt == "blurry"
    assert request.n == 2
    seeds = {image_request({}, "m", "a cat", "sd").seed for _ in range(5)}
    assert len(seeds) > 1
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    assert not image_request({}, "m", "a cat", "sd").seed_given


def test_enhance_switches():
    assert image_request({}, "m", "a cat", "chat").enhance
    assert not image_request({"enhance": False}, "m", "a cat", "chat").enhance
    request = image_request({}, "m", "a cat no-enhance, 16:9", "chat")
    assert not request.enhance
    assert request.prompt == "a cat"


def test_prompt_that_is_only_a_ratio_is_refused():
    with pytest.raises(errors.GatewayError) as caught:
        image_request({}, "m", " 16:9 ", "chat")
    assert caught.value.code == "invalid_parameters"


@pytest.mark.parametrize(
    ("alt", "expected"),
    [
        ("a cat", "![a cat](L)"),
        ("a ] b", "![a \\] b](L)"),
        ("x](http://evil)", "![x\\]\\(http://evil\\)](L)"),
        ("line\nbreak", "![line break](L)"),
        ("", "![image](L)"),
    ],
)
def test_markdown_image_escapes_alt_text(alt, expected):
    assert markdown_image(alt, "L") == expected
