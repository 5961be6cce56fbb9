"""The shared tier and key health over a real redis-server: what one instance stores or rests,
another sees; an outage is answered locally and its end noticed without a restart."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fakes import png_bytes
from shared_services import RedisServer

from tornado_imagegate.config import ConfigError, load_settings
from tornado_imagegate.images.cache import CachedImage
from tornado_imagegate.images.shared import SharedTier
from tornado_imagegate.keys import KeyPool, Outcome
from tornado_imagegate.options import OPTION
from tornado_imagegate.redis_link import KeyHealthBoard, RedisLink, SharedUnavailable

KEY = "ab" * 16
SECRET = b"s" * 32


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def links(io_loop, redis_server):
    """Two links to one Redis: two instances, as far as Redis can tell."""
    made = [RedisLink(redis_server.url), RedisLink(redis_server.url)]
    yield made
    for link in made:
        io_loop.run_sync(link.aclose)


@pytest.mark.gen_test
async def test_an_image_stored_by_one_instance_is_read_by_another_with_its_validators(links):
    image = CachedImage.build(png_bytes(seed=3), "image/png", last_modified=1_700_000_000.5)
    assert await SharedTier(links[0], 60).put(KEY, image)
    read = await SharedTier(links[1], 60).get(KEY)
    assert read == image
    assert await SharedTier(links[1], 60).get("cd" * 16) is None


@pytest.mark.gen_test
async def test_images_expire_after_the_ttl(links, redis_server):
    tier = SharedTier(links[0], 3600)
    await tier.put(KEY, CachedImage.build(png_bytes(seed=4), "image/png"))
    ttl = await links[0].client.pttl(links[0].key("image", KEY))
    assert 0 < ttl <= 3600 * 1000


@pytest.mark.gen_test
async def test_one_instance_holds_the_fetch_lock_and_the_others_get_its_image(links):
    first, second = SharedTier(links[0], 60), SharedTier(links[1], 60)
    token = await first.lock(KEY, 30)
    assert token is not None
    assert await second.lock(KEY, 30) is None
    image = CachedImage.build(png_bytes(seed=5), "image/png")
    deadline = asyncio.get_running_loop().time() + 30
    waiting = asyncio.ensure_future(second.wait_for(KEY, deadline))
    await first.put(KEY, image)
    await first.unlock(KEY, token)
    assert await waiting == image


@pytest.mark.gen_test
async def test_a_waiter_takes_over_when_the_lock_holder_is_gone(links):
    first, second = SharedTier(links[0], 60), SharedTier(links[1], 60)
    assert await first.lock(KEY, 0.05) is not None  # its holder dies: the lock expires
    deadline = asyncio.get_running_loop().time() + 30
    assert await second.wait_for(KEY, deadline) is None
    assert await second.lock(KEY, 30) is not None


@pytest.mark.gen_test(timeout=30)
async def test_an_outage_fails_fast_is_logged_once_and_its_end_is_noticed(
    links, redis_server, caplog
):
    link = links[0]
    tier = SharedTier(link, 60)
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="tornado_imagegate.redis_link"):
        for _ in range(5):
            with pytest.raises(SharedUnavailable):
                await tier.get(KEY)
        assert not await tier.put(KEY, CachedImage.build(png_bytes(seed=6), "image/png"))
        await link.probe()
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(said) == 1, said
    assert not link.reachable
    redis_server.start()
    await link.probe()
    assert link.reachable
    assert await tier.get(KEY) is None


@pytest.mark.gen_test
async def test_a_rest_decided_by_one_instance_reaches_the_others_as_a_fingerprint(links):
    pools = [KeyPool(("provider-key-one-1234", "provider-key-two-5678")) for _ in links]
    boards = [KeyHealthBoard(link, SECRET) for link in links]
    for board, pool in zip(boards, pools, strict=True):
        board.watch(pool)
    pools[0].record_failure(0, Outcome.RATE_LIMITED, retry_after=120)
    await asyncio.gather(*boards[0]._tasks)
    await boards[1].refresh()
    assert pools[1].resting() == 1
    assert [key for _, key in pools[1].order()] == ["provider-key-two-5678"]
    stored = [name async for name in links[0].client.scan_iter("imagegate:*")]
    assert stored and not any(b"provider-key" in name for name in stored)
    values = [await links[0].client.get(name) for name in stored]
    assert not any(b"provider-key" in (value or b"") for value in values)


@pytest.mark.gen_test
async def test_transient_failures_on_several_instances_add_up_to_a_rest(links):
    pools = [KeyPool(("key-a-00000000", "key-b-00000000")) for _ in links]
    boards = [KeyHealthBoard(link, SECRET) for link in links]
    for board, pool in zip(boards, pools, strict=True):
        board.watch(pool)
    # Three transient failures in a minute rest a key; no instance saw three on its own.
    for pool, board in ((pools[0], boards[0]), (pools[1], boards[1]), (pools[0], boards[0])):
        pool.record_failure(0, Outcome.TRANSIENT)
        await asyncio.gather(*board._tasks)
    await asyncio.gather(*boards[0]._tasks)
    await boards[1].refresh()
    assert pools[0].resting() == 1 and pools[1].resting() == 1


def test_redis_url_needs_a_shared_image_proxy_secret() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert any(p.startswith("IMAGE_PROXY_SECRET: ") for p in info.value.problems)
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1/0", "IMAGE_PROXY_SECRET": "x" * 20})
    assert settings.redis_url


def test_the_redis_password_is_a_secret_never_shown() -> None:
    url = "redis://default:redis-pass-4f1e@cache.example:6380/2?password=q-pass-8a8a"
    settings = load_settings({"REDIS_URL": url, "IMAGE_PROXY_SECRET": "x" * 20})
    assert {"redis-pass-4f1e", "q-pass-8a8a"} <= set(settings.secrets())
    assert "default" not in settings.secrets()
    shown = OPTION["REDIS_URL"].show(url)
    assert "redis-pass" not in shown and "q-pass" not in shown and "cache.example:6380/2" in shown


@pytest.mark.parametrize("url", ["http://host:6379", "redis://", "unix://", "redis://h:99999"])
def test_a_redis_url_that_is_not_one_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"REDIS_URL": url, "IMAGE_PROXY_SECRET": "x" * 20})
    assert any(p.startswith("REDIS_URL: ") for p in info.value.problems)
