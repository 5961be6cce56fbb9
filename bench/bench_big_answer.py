"""Benchmark how long one 60 MB provider answer stalls the gateway's event loop.

A fake OpenAI Images provider (``FakeOpenAIImages`` of tests/fakes, in this script re-run with
``--serve-fake``, its own process) answers every request with about 60 MB of JSON: two base64
images of ``--image-mib`` MiB each. The gateway (the real program,
``tornado_imagegate.server.main``, in a subprocess, ``LOG_LEVEL=WARNING``) asks it for two images
(a chat completion with ``"n": 2``), decodes the answer and keeps the images. Meanwhile this script
polls ``GET /health`` every 10 ms; the worst ``/health`` latency while the big answer is handled is
the stall a user of the same gateway notices. Before the rounds, the same polling runs with no big
answer, as a baseline.

Decoding modes of the gateway (``--mode``):

* ``process`` (the gateway as built): answers over 1 MiB are parsed in a worker process;
* ``inline``: every answer parsed on the event loop, as before the change (also ``--inline``);
* ``thread``: large answers parsed in a thread (json.loads and base64 hold the GIL).

Run from the repository root with the project installed::

    python bench/bench_big_answer.py                  # the gateway as built
    python bench/bench_big_answer.py --inline         # as before
    python bench/bench_big_answer.py --mode thread    # for comparison

Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

# The fakes shared with the tests (tests/fakes, not installed with the gateway).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes import Answer, FakeOpenAIImages, png_of_length

from tornado_imagegate.typos import throwaway_environment

CLIENT_KEY = "bench-big-answer-key"
POLL_INTERVAL = 0.010

# The gateway, with its decoder set to the mode asked for; argv[1] is the mode.
GATEWAY = """
import sys
from concurrent.futures import ThreadPoolExecutor
from tornado_imagegate.providers import decode
mode = sys.argv[1]
if mode == "inline":
    decode.DECODER.min_bytes = 1 << 62
elif mode == "thread":
    threads = ThreadPoolExecutor(1)
    decode.DECODER._executor = lambda: threads
from tornado_imagegate.server import main
raise SystemExit(main(sys.argv[2:]))
"""


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def big_answer(image_mib: int) -> bytes:
    """An OpenAI Images answer holding two "PNG" images (a PNG's first bytes, then noise)."""
    images = [png_of_length(8 + image_mib * 1024 * 1024) for _ in range(2)]
    return json.dumps(FakeOpenAIImages.b64_answer(*images).json).encode()


def serve_fake(port: int, image_mib: int) -> None:
    """The fake provider: every request gets the same big answer, until the driver stops it."""

    async def serve() -> None:
        fake = FakeOpenAIImages(port=port)
        body = big_answer(image_mib)
        fake.default = Answer(body=body, content_type="application/json")
        print(f"ready {len(body)}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def wait_until_up(client: AsyncHTTPClient, url: str, within: float = 30.0) -> None:
    """Poll ``url`` until it answers."""
    deadline = time.monotonic() + within
    while True:
        try:
            await client.fetch(url, request_timeout=1)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def poll_health(client: AsyncHTTPClient, url: str, stop: asyncio.Event) -> list[float]:
    """``GET /health`` every 10 ms until ``stop``; the latency of each, in seconds."""
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        await client.fetch(url, request_timeout=30)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(POLL_INTERVAL)
    return latencies


async def measure(base: str, rounds: int, baseline_seconds: float) -> None:
    """The baseline, then ``rounds`` big answers, each with /health polled meanwhile."""
    AsyncHTTPClient.configure(None, max_clients=4)  # the simple client is enough here
    client = AsyncHTTPClient()
    health = base + "/health"
    await wait_until_up(client, health)

    stop = asyncio.Event()
    poller = asyncio.create_task(poll_health(client, health, stop))
    await asyncio.sleep(baseline_seconds)
    stop.set()
    baseline = await poller
    print(f"baseline: {len(baseline)} polls, worst /health {max(baseline) * 1000:.1f} ms")

    worst = []
    body = json.dumps(
        {"model": "big-images", "n": 2, "messages": [{"role": "user", "content": "a cat"}]}
    )
    for number in range(1, rounds + 1):
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(client, health, stop))
        started = time.perf_counter()
        response = await client.fetch(
            base + "/v1/chat/completions",
            method="POST",
            body=body,
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
            request_timeout=120,
            raise_error=False,
        )
        elapsed = time.perf_counter() - started
        stop.set()
        latencies = await poller
        if response.code != 200:
            raise SystemExit(f"round {number}: HTTP {response.code}: {response.body[:300]!r}")
        worst.append(max(latencies))
        print(
            f"round {number}: chat completion {elapsed * 1000:.0f} ms, {len(latencies)} polls, "
            f"worst /health {max(latencies) * 1000:.1f} ms"
        )
    median = statistics.median(worst) * 1000
    print(
        f"worst /health latency while a big answer is handled: median {median:.1f} ms, "
        f"max {max(worst) * 1000:.1f} ms over {rounds} rounds"
    )


def main() -> int:
    """Start the fake and the gateway, measure, stop both."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["process", "inline", "thread"], default="process")
    parser.add_argument("--inline", action="store_true", help="same as --mode inline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-mib", type=int, default=22, help="each of the two images")
    parser.add_argument("--baseline-seconds", type=float, default=2.0)
    parser.add_argument("--serve-fake", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(args.serve_fake, args.image_mib)
        return 0
    mode = "inline" if args.inline else args.mode

    fake_port, gateway_port = free_port(), free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-fake",
            str(fake_port),
            "--image-mib",
            str(args.image_mib),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    gateway = None
    try:
        ready = fake.stdout.readline().split() if fake.stdout else []
        if not ready or ready[0] != "ready":
            raise SystemExit("the fake provider did not start")
        print(f"mode: {mode}; provider answer: {int(ready[1]) / 1e6:.1f} MB of JSON")
        env = throwaway_environment(os.environ)
        env.update(
            {
                "AUTHORIZED_API_KEY": CLIENT_KEY,
                "IMAGE_GEN_MODEL_1": "big-images",
                "IMAGE_GEN_API_BASE_1": f"http://127.0.0.1:{fake_port}/v1/images/generations",
                "IMAGE_GEN_API_KEY_1": "bench-provider-key",
                "IMAGE_GEN_KIND_1": "openai-images",
                "IMAGE_CACHE_MAX_BYTES": str(512 * 1024 * 1024),
                "LOG_LEVEL": "WARNING",
            }
        )
        gateway = subprocess.Popen(
            [sys.executable, "-c", GATEWAY, mode, "--port", str(gateway_port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        asyncio.run(measure(f"http://127.0.0.1:{gateway_port}", args.rounds, args.baseline_seconds))
    finally:
        for process in (gateway, fake):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
