"""Logs carry what an operator needs and never a secret, even at DEBUG."""

from __future__ import annotations

import logging

import pytest
from conftest import CLIENT_KEYS, LOG_WATCH, PROXY_SECRET, call, chat_body, json_of, post_chat

from tornado_imagegate.logsafe import LOG_FORMAT, SecondFormatter


@pytest.mark.gen_test
async def test_requests_full_of_secrets_leave_none_in_the_log(http_client, base_url):
    start = len(LOG_WATCH.lines)
    wrong = "sk-not-a-real-key-but-still-secret-4411"
    await call(http_client, base_url, "/v1/models", key=wrong)
    await call(http_client, base_url, f"/v1/models?api_key={CLIENT_KEYS[1]}", key=None)
    response = await post_chat(http_client, base_url, chat_body("a lamp"))
    link = json_of(response)["choices"][0]["message"]["content"].split("(")[1].rstrip(")")
    image_id = link.rsplit("=", 1)[1]
    await http_client.fetch(link)
    lines = LOG_WATCH.lines[start:]
    text = "\n".join(lines)
    assert "401 GET /v1/models" in text
    assert "200 POST /v1/chat/completions" in text
    assert "200 GET /image-proxy" in text
    for secret in (*CLIENT_KEYS, PROXY_SECRET, wrong, image_id):
        assert secret not in text


def test_log_lines_carry_the_time_logging_itself_would_write():
    # The date and time are formatted once a second: every line must still show its own.
    ours, logging_own = SecondFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    start = 1_700_000_000.0
    for created in (start + 0.25, start + 0.75, start + 1.001, start + 1.5, start + 61.2, start):
        record = logging.LogRecord("tornado.access", logging.INFO, "", 0, "200 GET /", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == logging_own.format(record)
        assert ours.formatTime(record, "%H:%M") == logging_own.formatTime(record, "%H:%M")
