"""Request ids: every answer carries one, the log names it, a proxy's own id is kept."""

from __future__ import annotations

import re

import pytest
from conftest import CLIENT_KEYS, LOG_WATCH, call


@pytest.mark.gen_test
async def test_every_answer_carries_a_request_id_that_the_log_names(http_client, base_url):
    seen = set()
    for path, key in (
        ("/health", None),
        ("/v1/models", None),
        ("/nope", None),
        ("/static/style.css", None),
        ("/v1/models", CLIENT_KEYS[0]),
    ):
        response = await call(http_client, base_url, path, key=key)
        request_id = response.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{16}", request_id)
        seen.add(request_id)
        assert any(f"id={request_id}" in line for line in LOG_WATCH.lines)
    assert len(seen) == 5
    kept = await call(http_client, base_url, "/health", headers={"X-Request-Id": "proxy-id-1234"})
    assert kept.headers["X-Request-Id"] == "proxy-id-1234"
    forged = await call(http_client, base_url, "/health", headers={"X-Request-Id": "a\u00e9 b"})
    assert forged.headers["X-Request-Id"] != "a\u00e9 b"
