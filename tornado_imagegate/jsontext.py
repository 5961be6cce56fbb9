"""Providers' JSON answers read with orjson, falling back on the standard library's reading."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(text: bytes | str) -> Any:
    """``json.loads(text)``, read by orjson where it can: a provider's answer carrying 100 KiB of
    base64 reads in about half the time.

    What orjson refuses (``NaN``, lone surrogates, bad UTF-8, nesting past 1024) goes to
    ``json.loads``, which accepts or refuses it as before. One difference remains: an integer
    past 64 bits reads as a float.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
