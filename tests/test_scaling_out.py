"""Three real gateway processes sharing one real redis-server behind a real nginx balancer:
images, fetched links and key rests are shared, a missing image is fetched once for all, and a
Redis outage costs no generation and no 500."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import CLIENT_KEYS, PROXY_SECRET, call, chat_body, register_secret
from fakes import Answer, png_bytes
from processes import Gateway, clean_env
from shared_services import Nginx, RedisServer
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tornado_imagegate.images.links import LinkSigner, derive_secret

SD_KEYS = ("sd-shared-key-one-7d21", "sd-shared-key-two-0b94")
register_secret(*SD_KEYS)
INSTANCES = 3
DEADLINE = 20.0


class Cluster:
    """A redis-server, ``INSTANCES`` gateways sharing it, and nginx in front of them."""

    def __init__(self, directory: Path, sd) -> None:
        self.directory = directory
        self.sd = sd
        self.redis: RedisServer | None = None
        self.gateways: list[Gateway] = []
        self.bases: list[str] = []
        self.nginx: Nginx | None = None

    async def start(self, **env: str) -> None:
        """Start Redis, the gateways (side by side) and nginx."""
        loop = asyncio.get_running_loop()
        self.redis = RedisServer(self.directory)
        settings = clean_env(
            AUTHORIZED_API_KEY=CLIENT_KEYS[0],
            IMAGE_PROXY_SECRET=PROXY_SECRET,
            REDIS_URL=self.redis.url,
            SD_API_KEY=",".join(SD_KEYS),
            SD_API_BASE=self.sd.url("gen"),
            IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS="true",
            EVENT_LOOP="asyncio",
            **env,
        )
        self.gateways = [
            Gateway(["--port", "0"], settings, self.directory / f"stderr-{number}.log")
            for number in range(INSTANCES)
        ]
        self.bases = list(
            await asyncio.gather(
                *[loop.run_in_executor(None, gateway.wait_listening) for gateway in self.gateways]
            )
        )
        backends = [urlsplit(base).netloc for base in self.bases]
        self.nginx = Nginx(self.directory / "nginx", backends)

    def close(self) -> None:
        """Stop everything that was started."""
        for gateway in self.gateways:
            gateway.close()
        if self.nginx is not None:
            self.nginx.stop()
        if self.redis is not None and self.redis.process is not None:
            self.redis.stop()


@pytest.fixture
def cluster(tmp_path, sd):
    made = Cluster(tmp_path, sd)
    yield made
    made.close()


@pytest.fixture
def client(io_loop):
    """A client that can hold 40 requests at once (the default holds 10)."""
    made = AsyncHTTPClient(force_instance=True, max_clients=40)
    yield made
    made.close()


async def generate(client, base: str, model: str = "Z-Image") -> str:
    """One chat completion: the path and query of the image link it answered."""
    response = await call(
        client, base, "/v1/chat/completions", "POST", chat_body("a lighthouse", model=model)
    )
    assert response.code == 200, response.body
    content = json.loads(response.body)["choices"][0]["message"]["content"]
    link = re.search(r"\]\((\S+?)\)", content).group(1)
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


async def fetch(client, url: str) -> HTTPResponse:
    return await client.fetch(url, raise_error=False, request_timeout=DEADLINE)


async def wait_ready(client, base: str, status: int) -> HTTPResponse:
    """Ask ``/ready`` until it answers ``status`` (the state changes within a probe interval)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        response = await fetch(client, base + "/ready")
        if response.code == status:
            return response
        assert time.monotonic() < deadline, f"/ready stayed {response.code}"
        await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=90)
async def test_an_image_made_by_one_instance_is_served_by_the_others_once_it_is_gone(
    cluster, client, sd
):
    await cluster.start()
    first = cluster.bases[0]
    fetched_link = await generate(client, first)  # the provider's URL, fetched and kept
    drawn_link = await generate(client, first, model="imagegate-demo")  # bytes, kept
    kept = {}
    for link in (fetched_link, drawn_link):
        response = await fetch(client, first + link)
        assert response.code == 200
        kept[link] = response.body
    origin_hits = sum(sd.image_host.hits.values())
    cluster.gateways[0].process.kill()
    cluster.gateways[0].process.wait()
    for base in (*cluster.bases[1:], cluster.nginx.url, cluster.nginx.url):
        for link, body in kept.items():
            response = await fetch(client, base + link)
            assert response.code == 200, (base, response.code, response.body)
            assert response.body == body
            assert response.headers["ETag"]
    assert sum(sd.image_host.hits.values()) == origin_hits  # never fetched again


@pytest.mark.gen_test(timeout=90)
async def test_a_key_rested_by_one_instance_rests_for_all(cluster, client, sd):
    rate_limited = Answer(429, sd.error_json(429, "slow down"), headers={"Retry-After": "120"})
    sd.default = Answer(json=sd.default.json, per_key={SD_KEYS[0]: rate_limited})
    await cluster.start()
    await generate(client, cluster.bases[0])  # key one: 429, then key two
    assert sd.keys_used() == list(SD_KEYS)
    loop = asyncio.get_running_loop()
    for gateway in cluster.gateways[1:]:
        await loop.run_in_executor(None, gateway.wait_for_stderr, r"key #1 rests \(shared\)")
    for base in cluster.bases[1:]:
        for _ in range(2):  # whichever key each instance's rotation starts at
            await generate(client, base)
    assert sd.keys_used()[2:] == [SD_KEYS[1]] * 4


@pytest.mark.gen_test(timeout=90)
async def test_thirty_requests_for_one_missing_image_across_instances_fetch_it_once(
    cluster, client, sd
):
    await cluster.start()
    image = png_bytes(seed=77)
    held = sd.image_host.hold("wanted.png", image)
    url = sd.image_host.url("wanted.png")
    query = LinkSigner(derive_secret(PROXY_SECRET, [])).query_for_url(url)
    link = f"/image-proxy?u={query['u']}&e={query['e']}&s={query['s']}"
    requests = [fetch(client, cluster.nginx.url + link) for _ in range(30)]
    gathered = asyncio.gather(*requests)
    await asyncio.wait_for(held.asked.wait(), DEADLINE)
    held.release.set()
    responses = await gathered
    assert [r.code for r in responses] == [200] * 30
    assert all(r.body == image for r in responses)
    assert sd.image_host.hits["wanted.png"] == 1


@pytest.mark.gen_test(timeout=120)
async def test_a_redis_outage_loses_no_generation_and_its_end_is_picked_up(cluster, client, sd):
    await cluster.start()
    first, second = cluster.bases[0], cluster.bases[1]
    only_in_redis = await generate(client, first, model="imagegate-demo")
    kept = (await fetch(client, first + only_in_redis)).body

    cluster.redis.stop(save=True)
    ready = await wait_ready(client, second, 503)
    assert json.loads(ready.body)["status"] == "degraded"
    assert "Redis" in json.loads(ready.body)["reason"]
    for base in cluster.bases:
        await wait_ready(client, base, 503)
        for model in ("Z-Image", "imagegate-demo"):
            link = await generate(client, base, model=model)  # generation goes on
            assert (await fetch(client, base + link)).code == 200  # served where it was made
            through = await fetch(client, cluster.nginx.url + link)
            assert through.code in (200, 503), through.body
            if through.code == 503:
                assert through.headers["Retry-After"]
    gone_for_now = await fetch(client, second + only_in_redis)
    assert gone_for_now.code == 503
    assert json.loads(gone_for_now.body)["error"]["code"] == "storage_unavailable"
    assert int(gone_for_now.headers["Retry-After"]) > 0

    cluster.redis.start()
    await wait_ready(client, second, 200)
    back = await fetch(client, second + only_in_redis)
    assert back.code == 200 and back.body == kept
    said = cluster.gateways[1].stderr()
    assert said.count("the shared store (Redis) is unreachable (") == 1, said
    assert "reachable again" in said
    assert "Traceback" not in said
