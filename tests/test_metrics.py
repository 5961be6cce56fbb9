"""/metrics: what it tells of requests, stages, keys, the cache and streams; who may read it."""

from __future__ import annotations

import re

import pytest
from conftest import LINK, assert_error, call, chat_body, json_of, post_chat, with_env


@pytest.mark.gen_test
@with_env({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true"})
async def test_metrics_tell_requests_stages_keys_cache_and_streams(http_client, base_url):
    response = await post_chat(
        http_client,
        base_url,
        chat_body("a vase", seed=1),
    )
    link = LINK.search(json_of(response)["choices"][0]["message"]["content"]).group(1)
    await http_client.fetch(link)
    await call(http_client, base_url, "/v1/models", key=None)
    metrics = await call(http_client, base_url, "/metrics", key=None)
    assert metrics.code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    assert re.search(
        r'imagegate_http_requests_total\{method="POST",route="ChatCompletionsHandler"'
        r',status="200"\} 1\.0',
        text,
    )
    assert 'status="401"' in text
    assert 'imagegate_stage_duration_seconds_count{stage="generate"} 1.0' in text
    assert "imagegate_image_cache_hits_total 1.0" in text
    assert "imagegate_image_cache_bytes " in text
    assert "imagegate_streams_open 0.0" in text
    assert "imagegate_provider_key_failures" in text


@pytest.mark.gen_test
async def test_metrics_through_a_local_proxy_are_refused(http_client, base_url):
    response = await call(
        http_client, base_url, "/metrics", key=None, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert_error(response, 403, "forbidden")


@pytest.mark.gen_test
@with_env({"METRICS_ACCESS": "off"})
async def test_metrics_can_be_turned_off(http_client, base_url):
    assert_error(await call(http_client, base_url, "/metrics", key=None), 404, "path_not_found")


@pytest.mark.gen_test
@with_env({"METRICS_ACCESS": "public"})
async def test_metrics_can_be_public(http_client, base_url):
    response = await call(
        http_client, base_url, "/metrics", key=None, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert response.code == 200


def requests_counted(text: str, sample: str) -> float:
    """The value of one sample (a name with its labels, as printed) in Prometheus text."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.gen_test
@with_env({"IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true"})
async def test_every_answer_is_counted_exactly_once_across_scrapes(http_client, base_url):
    response = await post_chat(http_client, base_url, chat_body("a boat", seed=2))
    link = LINK.search(json_of(response)["choices"][0]["message"]["content"]).group(1)
    served = '{method="GET",route="ImageProxyHandler",status="200"}'
    total, count = (
        "imagegate_http_requests_total" + served,
        ('imagegate_http_request_duration_seconds_count{route="ImageProxyHandler"}'),
    )
    seen = 0.0
    for fetches in (3, 0, 5):
        for _ in range(fetches):
            await http_client.fetch(link)
        text = (await call(http_client, base_url, "/metrics", key=None)).body.decode()
        seen += fetches
        assert requests_counted(text, total) == seen
        assert requests_counted(text, count) == seen
