"""Providers' answers read as the standard library reads them, also what orjson refuses."""

import json

import pytest

from tornado_imagegate import jsontext


@pytest.mark.parametrize(
    "text",
    [
        b'{"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]}',
        b'{"seed": NaN, "score": Infinity}',
        b'{"text": "\\ud800"}',
        '{"prompt": "caf\u00e9"}',
    ],
)
def test_reads_as_the_standard_library(text: bytes | str) -> None:
    """Each text reads to what ``json.loads`` gives (NaN compared by its text)."""
    assert repr(jsontext.loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", [b"", b"{", b"\xff\xfe", b"[1,]"])
def test_refuses_as_the_standard_library(text: bytes) -> None:
    """What ``json.loads`` refuses is refused with a ValueError (UnicodeDecodeError is one)."""
    with pytest.raises(ValueError):
        jsontext.loads(text)


@pytest.mark.parametrize(
    "value",
    [
        {"id": "chatcmpl-1", "created": 1796088751, "choices": [{"index": 0, "logprobs": None}]},
        {"content": "![a caf\u00e9 \u732b](http://127.0.0.1/image-proxy?id=ab&sig=cd)", "n": -3},
        {"quote": 'say "hi"\\\n\t\u0001 \u2028 </script>', "ok": True, "empty": [], "nested": {}},
        ["a", 1, None, False],
    ],
)
def test_writes_the_standard_librarys_compact_text(value) -> None:
    """Answers and requests read the same bytes the standard library wrote before."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert jsontext.dumps(value) == expected


@pytest.mark.parametrize("value", [{1: "a number as a key"}, {"seed": 2**70}])
def test_writes_what_orjson_refuses_as_the_standard_library(value) -> None:
    """Keys that are not text and integers past 64 bits are written by ``json.dumps``."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert jsontext.dumps(value) == expected
