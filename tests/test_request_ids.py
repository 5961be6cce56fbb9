"""Request ids: every answer carries one, the log names it, a proxy's own id is kept."""

from __future__ import annotations

import os
import re

import pytest
from conftest import CLIENT_KEYS, LOG_WATCH, call
from tornado.httputil import HTTPHeaders

from tornado_imagegate.handlers.base import REQUEST_IDS


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
    # Two ids in two header lines are not one well-formed id: the answer gets its own.
    twice = HTTPHeaders()
    twice.add("X-Request-Id", "proxy-id-1234")
    twice.add("X-Request-Id", "proxy-id-5678")
    for path in ("/health", "/image-proxy?id=" + "0" * 32):
        doubled = await http_client.fetch(base_url + path, headers=twice, raise_error=False)
        assert re.fullmatch(r"[0-9a-f]{16}", doubled.headers["X-Request-Id"])


def test_a_forked_worker_never_repeats_its_parents_request_ids():
    made_here = REQUEST_IDS.new()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a worker forked by the supervisor, it makes its own ids
        try:
            os.write(write_end, REQUEST_IDS.new().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        made_in_child = pipe.read().decode()
    os.waitpid(pid, 0)
    made_next_here = REQUEST_IDS.new()
    for request_id in (made_here, made_in_child, made_next_here):
        assert re.fullmatch(r"[0-9a-f]{16}", request_id)
    assert made_in_child[:8] != made_here[:8]
    assert len({made_here, made_in_child, made_next_here}) == 3
