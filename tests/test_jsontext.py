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
