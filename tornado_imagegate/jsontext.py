"""JSON read and written with orjson, falling back on the standard library where orjson refuses."""

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


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, the text ``json.dumps(value, ensure_ascii=False,
    separators=(",", ":"))`` writes for the gateway's answers and requests (strings, whole
    numbers, lists, dicts with text keys), written by orjson in a tenth of the time.

    What orjson refuses (keys that are not text, integers past 64 bits) goes to ``json.dumps``.
    Floats may be written differently (``1e+16`` reads the same as ``1e16``), and ``NaN`` would
    become ``null``: nothing the gateway writes holds one.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
