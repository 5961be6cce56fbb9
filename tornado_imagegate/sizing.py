"""Image sizes: the providers' aspect-ratio tables, ratios written in prompts, explicit sizes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from math import gcd

Size = tuple[int, int]

MIN_SIDE = 64
MAX_SIDE = 2048

# Longest side 1024, as the IMAGEGEN/Flux gateway this ports had it.
RATIOS_1024: dict[str, Size] = {
    "1:1": (1024, 1024),
    "1:2": (512, 1024),
    "3:2": (768, 512),
    "3:4": (768, 1024),
    "16:9": (1024, 576),
    "9:16": (576, 1024),
}
# Longest side 2048, as the Z-Image gateway this ports had it.
RATIOS_2048: dict[str, Size] = {
    "1:1": (2048, 2048),
    "1:2": (1024, 2048),
    "3:2": (1920, 1280),
    "3:4": (1536, 2048),
    "16:9": (2048, 1152),
    "9:16": (1152, 2048),
}
# Gemini's image models take an aspect ratio, never a size: these are the ratios its
# ``imageConfig.aspectRatio`` accepts, with the 1K sizes Google documents for each.
RATIOS_GEMINI: dict[str, Size] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}

# Ratios people write that are not in the tables: sized from the table's longest side.
# Anything else of the form a:b (10:30, 7:45) is left in the prompt: it is probably a time.
COMMON_RATIOS = frozenset(
    {
        "2:1",
        "2:3",
        "4:3",
        "4:5",
        "5:4",
        "3:1",
        "1:3",
        "21:9",
        "9:21",
        "16:10",
        "10:16",
        "5:7",
        "7:5",
        "3:5",
        "5:3",
        "9:19",
        "19:9",
    }
)

_RATIO = re.compile(
    r"(?P<lead>[,，;；]?\s*(?:(?:aspect\s+)?ratio\s*[:：=]?\s*|比例\s*[:：]?\s*)?)"
    r"(?<![\d.:：/])(?P<w>\d{1,2})\s*[:：]\s*(?P<h>\d{1,2})(?![\d:：])"
    r"(?!\s*(?:am|pm|a\.m|p\.m|h\b|uhr|点|時|时))",
    re.IGNORECASE,
)


def extract_ratio(prompt: str, table: dict[str, Size]) -> tuple[str, Size | None]:
    """Find the first aspect ratio written in ``prompt``; return the prompt without it and the size.

    A ratio is one of the table's, or a common one (``4:3``, ``21:9``...); other ``a:b`` pairs
    such as times are left alone. Both ``:`` and the full-width ``：`` count.
    """
    found = find_ratio(prompt, table)
    if found is None:
        return prompt.strip(), None
    match, size = found
    cleaned = prompt[: match.start()] + " " + prompt[match.end() :]
    return tidy_prompt(cleaned), size


def find_ratio(prompt: str, table: dict[str, Size]) -> tuple[re.Match[str], Size] | None:
    """The first aspect ratio written in ``prompt`` (its match, ``w`` and ``h`` groups) and size."""
    for match in _RATIO.finditer(prompt):
        w, h = int(match.group("w")), int(match.group("h"))
        key = f"{w}:{h}"
        if key in table:
            return match, table[key]
        if key in COMMON_RATIOS:
            return match, size_for_ratio(w, h, max(table["1:1"]))
    return None


def size_for_ratio(w: int, h: int, longest: int) -> Size:
    """A size of ratio w:h whose longest side is ``longest``, both sides multiples of 64."""
    if w >= h:
        short = max(MIN_SIDE, round(longest * h / w / 64) * 64)
        return longest, short
    short = max(MIN_SIDE, round(longest * w / h / 64) * 64)
    return short, longest


def tidy_prompt(text: str) -> str:
    """Collapse the spaces and stray separators left behind when a token is cut out of a prompt."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,，.;；!?。])", r"\1", text)
    text = re.sub(r"([,，;；])\s*(?=[,，;；])", "", text)
    return text.strip().strip(",，;；").strip()


def clamp_side(value: float) -> int:
    """Round a requested side and clamp it to what any provider accepts."""
    return min(MAX_SIDE, max(MIN_SIDE, round(value)))


_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")


def parse_size(text: str) -> Size | None:
    """Parse ``"WxH"`` into a clamped size, or None when it is not of that form."""
    match = _SIZE.match(text)
    if not match:
        return None
    return clamp_side(int(match.group(1))), clamp_side(int(match.group(2)))


def nearest_size(sizes: tuple[Size, ...], width: int, height: int) -> Size:
    """The size of ``sizes`` closest in aspect ratio (then in area) to ``width`` x ``height``."""
    if (width, height) in sizes:  # the usual case: a size from the ratio table
        return width, height
    wanted = math.log(width / height)
    return min(
        sizes,
        key=lambda s: (
            round(abs(math.log(s[0] / s[1]) - wanted), 6),
            abs(s[0] * s[1] - width * height),
        ),
    )


def ratio_text(width: int, height: int) -> str:
    """``"16:9"`` for 1024x576: the reduced ratio of a size, for prompts that carry it in words."""
    divisor = gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


@dataclass(frozen=True)
class SizeRules:
    """The sizes an API can make: side limits, a multiple, pixel and ratio limits, or a list.

    Zero means no limit. With ``sizes``, only those sizes are made (the nearest is taken).
    """

    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    multiple: int = 1
    min_pixels: int = 0
    max_pixels: int = 0
    # The longest side may be at most this many times the shortest.
    max_ratio: float = 0.0
    sizes: tuple[Size, ...] = ()

    def fit(self, width: int, height: int) -> Size:
        """The size nearest ``width`` x ``height`` in aspect ratio that keeps to these rules."""
        if self.sizes:
            return nearest_size(self.sizes, width, height)
        ratio = width / height
        if self.max_ratio:
            ratio = min(self.max_ratio, max(1 / self.max_ratio, ratio))
            height = round(math.sqrt(width * height / ratio))
            width = round(height * ratio)
        scale, rounding = 1.0, round
        if self.max_pixels and width * height > self.max_pixels:
            scale, rounding = math.sqrt(self.max_pixels / (width * height)), math.floor
        elif self.min_pixels and width * height < self.min_pixels:
            scale, rounding = math.sqrt(self.min_pixels / (width * height)), math.ceil
        scale = min(scale, self.max_side / max(width, height))
        scale = max(scale, self.min_side / min(width, height))
        return self._side(width * scale, rounding), self._side(height * scale, rounding)

    def _side(self, value: float, rounding: Callable[[float], int]) -> int:
        step = max(1, self.multiple)
        low = -(-self.min_side // step) * step
        high = self.max_side // step * step
        return min(high, max(low, rounding(value / step) * step))
