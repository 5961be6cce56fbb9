"""Benchmark the gateway's generation path against instant fake LLM and provider servers.

It measures, and checks against the targets of the issue:

(a) the latency the gateway adds: ``POST /v1/chat/completions`` through the gateway (model
    ``flux-fast``, ``"enhance": false``) against calling the fake provider directly the way a
    client would without the gateway: the SiliconFlow-shaped ``POST /v1/images/generations``,
    then ``GET`` of the image URL it answers (the gateway also fetches and keeps every image, and
    every generation has a fresh URL, so that is one image fetch per request on both sides). p50
    and p99 of both at concurrency 1 and 50, and their difference. Target: added p50 under 2 ms
    at concurrency 1. An informational row does the same with the prompt optimiser on (the
    gateway asks the fake LLM first; "direct" then also calls the LLM).
(b) a burst: 1000 chat completions sent at once with model ``flux-slow``, whose provider takes
    2 s to answer: wall time, failures, and the gateway's peak RSS (``VmHWM``, from a fresh
    gateway process). Targets: all succeed, in under 4 s, peak RSS under 250 MB. One burst is a
    single sample of a noisy machine, so it runs in rounds (3 by default), each against a fresh
    gateway: every round must succeed in full, the wall time checked is the median of the
    rounds, and the peak RSS the largest. Each answer
    must be a ``chat.completion`` holding a markdown image link; a few links are fetched
    (200, ``image/png``).

Three kinds of processes, all on 127.0.0.1, started here and always stopped at the end:

* the fakes (this script re-run with ``--serve-fakes``): one Tornado process running the fakes
  the tests use (tests/fakes), each on a port of its own: a SiliconFlow provider
  (``FakeSiliconFlow``, instant), a second one answering after ``--slow-delay`` seconds, their
  image host (``FakeOrigin``, a real PNG of about 9 KB from ``demo_render``) and an
  OpenAI-compatible LLM (``FakeLLM``) answering a fixed completion at once; the driver reads
  their addresses and the slow provider's timeline over the process's stdin and stdout;
* the gateway, the real program (``python -m tornado_imagegate --port 0``), configured through
  its environment only: ``FLUX_GEN_*`` (``flux-fast``), ``IMAGE_GEN_*_1`` (``flux-slow``, kind
  ``siliconflow``), ``OPENAI_*`` (the fake LLM), ``IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS=true`` (the
  fake image host is on loopback) and ``LOG_LEVEL=WARNING``: at ``INFO`` every request writes an
  access line and a "generated" line to stderr (a file here), gateway CPU time that is not the
  pipeline's; ``--gateway-log-level INFO`` measures the difference;
* the load generator: this script, with Tornado's curl ``AsyncHTTPClient`` (keep-alive, up to
  2000 requests in flight).

In (a), direct and gateway requests run in alternating short blocks (10 requests at concurrency
1, 250 at 50) after a warm-up of each, so that both see the same machine: anything else running
there moves both. The gateway's CPU time per request (from ``/proc``) is printed too: on a busy
or small machine it explains more than the latencies do. The processes share the machine's CPUs,
so latencies at concurrency 50 include CPU contention, on both sides of the comparison. In (b),
the fake provider notes when the slow requests arrived and left, and curl's connect times show
connections whose SYN the gateway's full listen queue dropped (retried after 1 s).

The soft ``RLIMIT_NOFILE`` is raised before any child starts (children inherit it).

Run it from the repository root with the project installed, e.g.::

    python bench/bench_generation.py                 # about 50 seconds with the defaults
    python bench/bench_generation.py --requests-c1 300 --requests-c50 2000
    python bench/bench_generation.py --py-spy /tmp/prof   # also profile the gateway (raw stacks)

The exit status is 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycurl
import tornado
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from tornado_imagegate.prompt import NON_REASONING_SYSTEM_PROMPT
from tornado_imagegate.typos import throwaway_environment

# The fakes shared with the tests (tests/fakes, not installed with the gateway).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes import (
    Answer,
    FakeLLM,
    FakeOrigin,
    FakeSiliconFlow,
    emit,
    png_bytes,
    serve_until_stdin_closes,
)

HOST = "127.0.0.1"
API_KEY = "bench-key"
FAST_MODEL = "flux-fast"
SLOW_MODEL = "flux-slow"
LLM_MODEL = "bench-llm"
PROMPT = "a cat"
OPTIMISED_PROMPT = "a cat sitting on a sunny windowsill, watercolour illustration, soft light"
FAST_KEYS = "k1,k2"
SLOW_KEY = "k3"
LLM_KEY = "k-llm"
PNG_SIDE = 512  # png_bytes(512, seed=1, text="bench") is about 9 KB

TARGET_ADDED_P50_MS = 2.0
TARGET_BURST_WALL_S = 4.0
TARGET_PEAK_RSS_MB = 250.0

CLIENT_MAX_CLIENTS = 2000
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 60.0
GATEWAY_GEN_TIMEOUT = 30  # IMAGE_GEN_TIMEOUT: a stuck run fails in 30 s instead of 180 s
FAKE_BACKLOG = 4096  # the fakes must never be the ones refusing connections
SHOWN_FAILURES = 5
SLOW_CONNECT = 0.9  # a connect this slow had its SYN dropped and retried (first retry: 1 s)

LISTENING = re.compile(r"listening on (\S+):(\d+)\s*$")
ADDRESSES = re.compile(r"^\{.*\}\s*$")  # the fakes process's first line
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\((https?://[^)\s]+)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the fakes (the --serve-fakes process) ------------------------------------------------


def slow_timeline(slow: FakeSiliconFlow) -> dict[str, float]:
    """When the slow provider received its requests and answered them (``time.time()``)."""
    arrivals = [request.received_at for request in slow.requests]
    answers = [request.answered_at for request in slow.requests if request.answered_at]
    return {
        "count": len(arrivals),
        "first_arrival": min(arrivals, default=0.0),
        "last_arrival": max(arrivals, default=0.0),
        "first_answer": min(answers, default=0.0),
        "last_answer": max(answers, default=0.0),
    }


async def serve_fakes(slow_delay: float) -> None:
    """Run the fakes until this process's stdin closes (the driver ended or died).

    The SiliconFlow provider answers at once, its slow twin after ``slow_delay`` seconds; both
    put the benchmark PNG on the image host; the LLM answers a fixed completion. Each wants a
    bearer key. The driver's commands: ``timeline`` (of the slow provider) and ``reset``.
    """
    png = png_bytes(PNG_SIDE, seed=1, text="bench")
    images = FakeOrigin(HOST, backlog=FAKE_BACKLOG)
    fast = FakeSiliconFlow(images, HOST, backlog=FAKE_BACKLOG)
    slow = FakeSiliconFlow(images, HOST, backlog=FAKE_BACKLOG)
    slow.default = Answer(json=slow.default.json, delay=slow_delay)
    llm = FakeLLM(HOST, backlog=FAKE_BACKLOG)
    llm.reply = OPTIMISED_PROMPT
    for fake in (fast, slow, llm):
        fake.require_key = True
    for provider in (fast, slow):
        provider.make_png = lambda number: png

    def reset() -> dict[str, Any]:
        slow.requests.clear()
        return {}

    emit(
        {
            "provider": fast.url("v1/images/generations"),
            "slow_provider": slow.url("v1/images/generations"),
            "llm": llm.base_url(),
        }
    )
    await serve_until_stdin_closes(
        {"timeline": lambda: slow_timeline(slow), "reset": reset}, stop_on_signals=True
    )


# --- child processes ----------------------------------------------------------------------


@dataclass
class Child:
    """A started child process and the line it announced itself with on stdout."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: str
    ready_line: str = ""

    @property
    def url(self) -> str:
        """The origin of a gateway (from its ``listening on HOST:PORT`` line)."""
        match = LISTENING.search(self.ready_line)
        assert match is not None, self.ready_line
        return f"http://{HOST}:{match.group(2)}"

    @property
    def addresses(self) -> dict[str, str]:
        """The base URLs a fakes process announced (provider, slow_provider, llm)."""
        return json.loads(self.ready_line)

    def ask(self, command: str) -> dict[str, Any]:
        """Send a fakes process a command; its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} did not answer {command!r}:\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines it wrote to stderr."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""


# The checkout this script belongs to: its servers run that checkout's code, whatever the current
# directory, PYTHONPATH or the installed copy (``python -m`` would load the current directory's).
CHECKOUT = str(Path(__file__).resolve().parent.parent)


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on the Python path."""
    rest = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": CHECKOUT + (os.pathsep + rest if rest else "")}


def start_child(
    name: str,
    command: Sequence[str],
    env: dict[str, str],
    log_dir: str,
    announcement: re.Pattern[str] = LISTENING,
    timeout: float = START_TIMEOUT,
) -> Child:
    """Start a server process and wait for the line on stdout that says it is ready (stopping
    it again if it does not come within ``timeout`` seconds, or the wait is interrupted)."""
    log_path = os.path.join(log_dir, f"{name}.stderr")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=checkout_env(env),
            cwd=CHECKOUT,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    child = Child(name, proc, log_path)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline().decode("utf-8", "replace")
            if not line:
                break
            seen.append(line)
            if announcement.search(line):
                return Child(name, proc, log_path, line.strip())
    except BaseException:  # Ctrl-C while it starts: no child is left behind
        stop_child(child)
        raise
    stop_child(child)
    raise RuntimeError(
        f"{name} did not start (exit status {proc.returncode}); stdout: {''.join(seen)!r}; "
        f"stderr:\n{child.log_tail()}"
    )


def stop_child(child: Child | None) -> None:
    """Stop a child: close its stdin, SIGTERM, and SIGKILL if it lingers."""
    if child is None:
        return
    proc = child.proc
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def finish_child(child: Child | None) -> None:
    """Show what a child wrote to stderr (all of it if it died), then stop it."""
    if child is None:
        return
    if child.proc.poll() is not None:
        print(f"{child.name} exited early (status {child.proc.returncode}):\n{child.log_tail()}")
    elif os.path.getsize(child.log_path):
        print(f"{child.name} stderr (last lines):\n{child.log_tail(10)}")
    stop_child(child)


def gateway_env(fakes: Child, log_level: str, upstream_max_clients: int | None) -> dict[str, str]:
    """The gateway's configuration: the inherited environment without its variables, plus ours."""
    # Only ours apply: what the gateway reads (or would report as a near miss) is not inherited,
    # and no data directory: nothing is kept between runs.
    env = throwaway_environment(os.environ)
    env.update(
        {
            "AUTHORIZED_API_KEY": API_KEY,
            "FLUX_GEN_MODEL": FAST_MODEL,
            "FLUX_GEN_API_BASE": fakes.addresses["provider"],
            "FLUX_GEN_API_KEY": FAST_KEYS,
            "IMAGE_GEN_MODEL_1": SLOW_MODEL,
            "IMAGE_GEN_KIND_1": "siliconflow",
            "IMAGE_GEN_API_BASE_1": fakes.addresses["slow_provider"],
            "IMAGE_GEN_API_KEY_1": SLOW_KEY,
            "OPENAI_API_BASE": fakes.addresses["llm"],
            "OPENAI_API_KEY": LLM_KEY,
            "OPENAI_MODEL": LLM_MODEL,
            "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
            "IMAGE_GEN_TIMEOUT": str(GATEWAY_GEN_TIMEOUT),
            "LOG_LEVEL": log_level,
        }
    )
    if upstream_max_clients is not None:
        env["UPSTREAM_MAX_CLIENTS"] = str(upstream_max_clients)
    return env


def start_gateway(
    name: str,
    env: dict[str, str],
    log_dir: str,
    python_args: Sequence[str] = (),
    launcher: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> Child:
    """The real gateway program on a free loopback port (``python_args`` go before ``-m``;
    ``launcher`` before Python itself, e.g. valgrind)."""
    command = [
        *launcher,
        sys.executable,
        *python_args,
        "-m",
        "tornado_imagegate",
        "--host",
        HOST,
        "--port",
        "0",
    ]
    return start_child(name, command, env, log_dir, timeout=timeout)


def start_fakes(slow_delay: float, log_dir: str) -> Child:
    """This script re-run as the fakes process."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--serve-fakes",
        "--slow-delay",
        str(slow_delay),
    ]
    return start_child("fakes", command, dict(os.environ), log_dir, announcement=ADDRESSES)


def wrk_post_script(directory: str, name: str, body: dict[str, Any], key: str) -> str:
    """A wrk script (``<directory>/<name>.lua``) POSTing this JSON body with a bearer key."""
    path = os.path.join(directory, f"{name}.lua")
    with open(path, "w", encoding="utf-8") as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        )
    return path


# --- /proc ----------------------------------------------------------------------------------


def proc_status_mb(pid: int, field_name: str) -> float:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field_name)


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """The host's ``TcpExt: ListenOverflows`` counter (connections a full accept queue dropped)."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return 0
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def py_spy(pid: int, directory: str | None, name: str) -> Iterator[None]:
    """Record the process with py-spy (raw collapsed stacks) while the block runs, if asked."""
    if directory is None:
        yield
        return
    executable = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    os.makedirs(directory, exist_ok=True)
    output = os.path.join(directory, f"{name}.txt")
    command = [executable, "record", "--format", "raw", "--rate", "200", "-o", output]
    recorder = subprocess.Popen(
        [*command, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
        print(f"  py-spy profile of the gateway ({name}): {output}")


# --- load generation -----------------------------------------------------------------------


@dataclass
class Outcome:
    """One timed operation: success, seconds, and what went wrong."""

    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Sample:
    """The latencies of a closed-loop run."""

    latencies: list[float]
    failures: list[str]
    wall: float

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile, in milliseconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        index = max(0, math.ceil(p / 100.0 * len(ordered)) - 1)
        return 1000.0 * ordered[index]

    @property
    def rate(self) -> float:
        """Completed operations per second."""
        return len(self.latencies) / self.wall if self.wall else math.nan

    def extend(self, other: Sample) -> None:
        """Add another run's operations."""
        self.latencies += other.latencies
        self.failures += other.failures
        self.wall += other.wall


def describe(response: HTTPResponse) -> str:
    """A short description of a failed answer."""
    if response.code == 599:
        return f"599 {response.error}"
    body = (response.body or b"")[:200].decode("utf-8", "replace")
    return f"{response.code} {body}"


def json_request(url: str, key: str, body: dict[str, Any]) -> HTTPRequest:
    """A JSON POST with a bearer key."""
    return HTTPRequest(
        url,
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        body=json.dumps(body),
        request_timeout=REQUEST_TIMEOUT,
        connect_timeout=REQUEST_TIMEOUT,
    )


def gateway_request(gateway: Child, model: str, enhance: bool) -> HTTPRequest:
    """A chat completion request to the gateway."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if not enhance:
        body["enhance"] = False
    return json_request(f"{gateway.url}/v1/chat/completions", API_KEY, body)


class Operations:
    """The timed operations: through the gateway, and the same work done directly."""

    def __init__(self, client: AsyncHTTPClient, gateway: Child, fakes: Child) -> None:
        self.client = client
        self.gateway = gateway
        self.fakes = fakes

    async def via_gateway(self, enhance: bool) -> Outcome:
        """One chat completion through the gateway."""
        request = gateway_request(self.gateway, FAST_MODEL, enhance)
        started = time.perf_counter()
        response = await self.client.fetch(request, raise_error=False)
        seconds = time.perf_counter() - started
        if response.code != 200:
            return Outcome(False, seconds, describe(response))
        return Outcome(True, seconds)

    async def direct(self, optimise: bool) -> Outcome:
        """What a client would do without the gateway: (LLM,) provider, then the image."""
        started = time.perf_counter()
        prompt = PROMPT
        if optimise:
            llm_body = {
                "model": LLM_MODEL,
                "messages": [
                    {"role": "system", "content": NON_REASONING_SYSTEM_PROMPT},
                    {"role": "user", "content": f"Input: {PROMPT}\nOutput:"},
                ],
            }
            url = f"{self.fakes.addresses['llm']}/chat/completions"
            response = await self.client.fetch(
                json_request(url, LLM_KEY, llm_body), raise_error=False
            )
            if response.code != 200:
                return Outcome(False, time.perf_counter() - started, "llm " + describe(response))
            prompt = json.loads(response.body)["choices"][0]["message"]["content"]
        provider_body = {
            "model": FAST_MODEL,
            "prompt": prompt,
            "image_size": "1024x1024",
            "num_inference_steps": 50,
            "seed": random.randrange(2**31),
        }
        url = self.fakes.addresses["provider"]
        response = await self.client.fetch(
            json_request(url, "k1", provider_body), raise_error=False
        )
        if response.code != 200:
            return Outcome(False, time.perf_counter() - started, "provider " + describe(response))
        image_url = json.loads(response.body)["images"][0]["url"]
        image = await self.client.fetch(image_url, raise_error=False)
        seconds = time.perf_counter() - started
        if image.code != 200:
            return Outcome(False, seconds, "image " + describe(image))
        return Outcome(True, seconds)


async def closed_loop(
    operation: Callable[[], Awaitable[Outcome]], total: int, concurrency: int
) -> Sample:
    """Run ``total`` operations, ``concurrency`` of them in flight at any time."""
    latencies: list[float] = []
    failures: list[str] = []
    counter = itertools.count()

    async def worker() -> None:
        while next(counter) < total:
            outcome = await operation()
            if outcome.ok:
                latencies.append(outcome.seconds)
            else:
                failures.append(outcome.detail)

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(min(concurrency, total))])
    return Sample(latencies, failures, time.perf_counter() - started)


# --- (a) added latency ---------------------------------------------------------------------


@dataclass
class LatencyRow:
    """Direct and gateway samples of one scenario."""

    label: str
    concurrency: int
    direct: Sample
    gateway: Sample
    gateway_cpu: float  # gateway CPU seconds used during its run

    def added(self, p: float) -> float:
        """Gateway minus direct at percentile ``p``, in milliseconds."""
        return self.gateway.percentile(p) - self.direct.percentile(p)


async def interleaved(
    direct: Callable[[], Awaitable[Outcome]],
    via_gateway: Callable[[], Awaitable[Outcome]],
    total: int,
    concurrency: int,
    gateway_pid: int,
) -> tuple[Sample, Sample, float]:
    """Alternate short blocks of direct and gateway operations after a warm-up of each.

    Alternating gives both sides the same share of whatever else the machine is doing; one
    long run after the other would not. Returns both samples and the gateway's CPU seconds.
    """
    block = max(10, 5 * concurrency)
    warmup = max(50, 2 * concurrency)
    await closed_loop(direct, warmup, concurrency)
    await closed_loop(via_gateway, warmup, concurrency)
    direct_sample, gateway_sample = Sample([], [], 0.0), Sample([], [], 0.0)
    cpu = 0.0
    for done in range(0, total, block):
        size = min(block, total - done)
        direct_sample.extend(await closed_loop(direct, size, concurrency))
        before = proc_cpu_seconds(gateway_pid)
        gateway_sample.extend(await closed_loop(via_gateway, size, concurrency))
        cpu += proc_cpu_seconds(gateway_pid) - before
    return direct_sample, gateway_sample, cpu


async def measure_latency(
    gateway: Child,
    fakes: Child,
    scenarios: Sequence[tuple[str, int, int, bool]],
) -> list[LatencyRow]:
    """For each (label, concurrency, requests, optimiser on): direct and gateway, interleaved."""
    client = AsyncHTTPClient()
    operations = Operations(client, gateway, fakes)
    rows = []
    try:
        for label, concurrency, total, optimiser in scenarios:
            direct, through, cpu = await interleaved(
                lambda o=optimiser: operations.direct(o),
                lambda o=optimiser: operations.via_gateway(o),
                total,
                concurrency,
                gateway.proc.pid,
            )
            rows.append(LatencyRow(label, concurrency, direct, through, cpu))
    finally:
        client.close()
    return rows


def print_latency(rows: Sequence[LatencyRow]) -> None:
    """The table of (a)."""
    print()
    print("(a) latency added by the gateway (ms; direct = provider POST + image GET)")
    print("    added = gateway - direct; gw CPU/req = gateway process CPU time per request")
    header = (
        f"  {'scenario':<24}{'n':>6}{'direct p50':>12}{'p99':>8}{'gateway p50':>13}{'p99':>8}"
        f"{'added p50':>11}{'p99':>8}{'gw req/s':>10}{'gw CPU/req':>12}{'fail':>6}"
    )
    print(header)
    for row in rows:
        cpu_per_request = 1000.0 * row.gateway_cpu / max(1, len(row.gateway.latencies))
        failures = len(row.direct.failures) + len(row.gateway.failures)
        print(
            f"  {row.label:<24}{len(row.gateway.latencies):>6}"
            f"{row.direct.percentile(50):>12.2f}{row.direct.percentile(99):>8.2f}"
            f"{row.gateway.percentile(50):>13.2f}{row.gateway.percentile(99):>8.2f}"
            f"{row.added(50):>11.2f}{row.added(99):>8.2f}"
            f"{row.gateway.rate:>10.0f}{cpu_per_request:>10.2f}ms{failures:>6}"
        )
        for detail in (row.direct.failures + row.gateway.failures)[:SHOWN_FAILURES]:
            print(f"    failure: {detail}")


# --- (b) burst ----------------------------------------------------------------------------


@dataclass
class BurstResult:
    """The outcome of the burst."""

    count: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    links_checked: int = 0
    link_failures: list[str] = field(default_factory=list)
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    rss_after_mb: float = 0.0
    gateway_cpu: float = 0.0
    listen_overflows: int = 0
    started_at: float = 0.0  # time.time() when the burst was sent, to read the timeline
    timeline: dict[str, float] = field(default_factory=dict)
    connect_times: list[float] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        """Valid chat completions received."""
        return self.count - len(self.failures)


def check_completion(response: HTTPResponse) -> tuple[str | None, str]:
    """The image link of a valid chat completion answer, or (None, what is wrong)."""
    if response.code != 200:
        return None, describe(response)
    try:
        answer = json.loads(response.body)
        content = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, f"200 but not a chat completion: {response.body[:200]!r}"
    match = MARKDOWN_IMAGE.search(content) if isinstance(content, str) else None
    if answer.get("object") != "chat.completion" or match is None:
        return None, f"200 without a markdown image: {response.body[:200]!r}"
    return match.group(1), ""


async def run_burst(gateway: Child, fakes: Child, count: int, verify_links: int) -> BurstResult:
    """Send ``count`` slow chat completions at once, wait for all, check a few image links."""
    client = AsyncHTTPClient()
    result = BurstResult(count)
    requests = [gateway_request(gateway, SLOW_MODEL, enhance=False) for _ in range(count)]

    async def one(request: HTTPRequest) -> tuple[HTTPResponse, float]:
        started = time.perf_counter()
        response = await client.fetch(request, raise_error=False)
        return response, time.perf_counter() - started

    try:
        fakes.ask("reset")
        result.started_at = time.time()
        started = time.perf_counter()
        answers = await asyncio.gather(*[one(request) for request in requests])
        result.wall = time.perf_counter() - started
        result.timeline = fakes.ask("timeline")
        for response, seconds in answers:
            result.connect_times.append(response.time_info.get("connect", 0.0))
            link, problem = check_completion(response)
            if link is None:
                result.failures.append(problem)
            else:
                result.latencies.append(seconds)
                result.links.append(link)
        for link in random.sample(result.links, min(verify_links, len(result.links))):
            image = await client.fetch(link, raise_error=False)
            result.links_checked += 1
            content_type = image.headers.get("Content-Type", "")
            if image.code != 200 or content_type != "image/png":
                result.link_failures.append(f"{image.code} {content_type!r}")
            elif not (image.body or b"").startswith(PNG_SIGNATURE):
                result.link_failures.append("200 image/png but not a PNG")
    finally:
        client.close()
    return result


def print_burst(result: BurstResult, slow_delay: float, label: str = "") -> None:
    """The report of one round of (b)."""
    ordered = sorted(result.latencies) or [math.nan]
    print()
    print(
        f"(b) {result.count} concurrent chat completions, provider answering in {slow_delay:g} s"
        f"{label}"
    )
    print(f"  wall time              {result.wall:8.2f} s")
    print(f"  succeeded              {result.succeeded:8d} / {result.count}")
    print(
        f"  latency min/p50/max    {ordered[0]:8.2f} / {ordered[len(ordered) // 2]:.2f} / "
        f"{ordered[-1]:.2f} s"
    )
    print(f"  failures               {len(result.failures):8d}")
    for detail in result.failures[:SHOWN_FAILURES]:
        print(f"    {detail}")
    print(
        f"  image links checked    {result.links_checked:8d} "
        f"({result.links_checked - len(result.link_failures)} served 200 image/png)"
    )
    for detail in result.link_failures[:SHOWN_FAILURES]:
        print(f"    {detail}")
    print(f"  gateway RSS before     {result.rss_before_mb:8.1f} MB")
    print(f"  gateway peak RSS       {result.peak_rss_mb:8.1f} MB (VmHWM)")
    print(f"  gateway RSS after      {result.rss_after_mb:8.1f} MB")
    print(
        f"  gateway CPU            {result.gateway_cpu:8.2f} s "
        f"({1000.0 * result.gateway_cpu / result.count:.2f} ms a request)"
    )
    slow_connects = sum(1 for seconds in result.connect_times if seconds >= SLOW_CONNECT)
    print(
        f"  connects over {SLOW_CONNECT:g} s    {slow_connects:8d} (SYN dropped by a full listen "
        f"queue, retried; max {max(result.connect_times, default=0.0):.2f} s)"
    )
    print(
        f"  listen queue overflows {result.listen_overflows:8d} "
        "(whole host, TcpExt:ListenOverflows)"
    )
    timeline = result.timeline
    if timeline.get("count"):

        def at(name: str) -> str:
            return f"+{timeline[name] - result.started_at:.2f} s"

        print("  timeline, from the moment the burst was sent:")
        print(
            f"    provider received      {at('first_arrival')} .. {at('last_arrival')} "
            f"({timeline['count']:.0f} requests)"
        )
        print(f"    provider answered      {at('first_answer')} .. {at('last_answer')}")
        print(f"    clients got answers    +{ordered[0]:.2f} s .. +{ordered[-1]:.2f} s")


# --- summary ------------------------------------------------------------------------------


def print_summary(rows: Sequence[LatencyRow], bursts: Sequence[BurstResult]) -> bool:
    """The targets, what was measured, PASS or FAIL; True when all pass.

    With several rounds of (b), every round must succeed in full, the wall time is their median
    and the peak RSS their maximum.
    """
    checks: list[tuple[str, str, str, bool]] = []
    for row in rows:
        if row.concurrency == 1 and row.label.startswith("chat"):
            added = row.added(50)
            clean = not row.direct.failures and not row.gateway.failures
            checks.append(
                (
                    "(a) added p50, concurrency 1",
                    f"{added:.2f} ms",
                    f"< {TARGET_ADDED_P50_MS:g} ms",
                    clean and added < TARGET_ADDED_P50_MS,
                )
            )
    if bursts:
        count = bursts[0].count
        succeeded = min(burst.succeeded for burst in bursts)
        links_ok = all(not b.link_failures and b.links_checked > 0 for b in bursts)
        wall = statistics.median(burst.wall for burst in bursts)
        peak = max(burst.peak_rss_mb for burst in bursts)
        rounds = f" (median of {len(bursts)})" if len(bursts) > 1 else ""
        checks += [
            (
                f"(b) {count} concurrent: all succeed",
                f"{succeeded}/{count}",
                f"{count}/{count}, links ok",
                succeeded == count and links_ok,
            ),
            (
                f"(b) wall time{rounds}",
                f"{wall:.2f} s",
                f"< {TARGET_BURST_WALL_S:g} s",
                wall < TARGET_BURST_WALL_S,
            ),
            (
                "(b) gateway peak RSS (VmHWM)",
                f"{peak:.1f} MB",
                f"< {TARGET_PEAK_RSS_MB:g} MB",
                peak < TARGET_PEAK_RSS_MB,
            ),
        ]
    print()
    print("Summary")
    print(f"  {'target':<36}{'measured':>14}{'limit':>22}  result")
    for name, measured, limit, passed in checks:
        print(f"  {name:<36}{measured:>14}{limit:>22}  {'PASS' if passed else 'FAIL'}")
    return bool(checks) and all(passed for *_, passed in checks)


# --- driver -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests-c1", type=int, default=1000, help="measured requests at concurrency 1"
    )
    parser.add_argument(
        "--requests-c50", type=int, default=3000, help="measured requests at concurrency 50"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="the high concurrency of (a) (default 50)"
    )
    parser.add_argument(
        "--no-optimiser",
        action="store_true",
        help="skip the informational row with the prompt optimiser on",
    )
    parser.add_argument("--burst", type=int, default=1000, help="concurrent requests of (b)")
    parser.add_argument(
        "--burst-rounds",
        type=int,
        default=3,
        help="rounds of (b), each with a fresh gateway; the wall time is their median",
    )
    parser.add_argument(
        "--slow-delay", type=float, default=2.0, help="seconds the slow provider takes"
    )
    parser.add_argument(
        "--verify-links", type=int, default=5, help="image links of (b) to fetch and check"
    )
    parser.add_argument("--skip-latency", action="store_true", help="skip (a)")
    parser.add_argument("--skip-burst", action="store_true", help="skip (b)")
    parser.add_argument(
        "--gateway-log-level",
        default="WARNING",
        help="the gateway's LOG_LEVEL (default WARNING: no access lines)",
    )
    parser.add_argument(
        "--upstream-max-clients",
        type=int,
        default=None,
        help="the gateway's UPSTREAM_MAX_CLIENTS (default: the gateway's own default)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="record the gateway with py-spy during each part into DIR (distorts the numbers)",
    )
    parser.add_argument(
        "--gateway-python-args",
        default="",
        metavar="ARGS",
        help="interpreter arguments for the gateway, before '-m tornado_imagegate' "
        "(e.g. '-m cProfile -o /tmp/gateway.prof'; distorts the numbers)",
    )
    parser.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.burst_rounds < 1:
        parser.error("--burst-rounds must be at least 1 (use --skip-burst to skip (b))")
    return args


def print_header(args: argparse.Namespace, open_files: int) -> None:
    """What ran where."""
    print("bench_generation: the gateway's generation path against instant fakes")
    print(
        f"  Python {platform.python_version()}, Tornado {tornado.version}, "
        f"{pycurl.version.split()[0]}, {os.cpu_count()} CPUs, RLIMIT_NOFILE {open_files}"
    )
    print(f"  load average {os.getloadavg()[0]:.2f} (other work on this machine skews the numbers)")
    print(
        f"  gateway LOG_LEVEL={args.gateway_log_level}, "
        f"UPSTREAM_MAX_CLIENTS={args.upstream_max_clients or 'default'}, "
        f"image {len(png_bytes(PNG_SIDE, seed=1, text='bench'))} bytes"
    )


def run(args: argparse.Namespace) -> int:
    """Start the fakes and gateways, run both parts, stop everything, print the summary."""
    open_files = raise_open_files_limit(max(8192, 4 * args.burst + 1024))
    if open_files < 2 * args.burst + 256:
        print(f"RLIMIT_NOFILE is {open_files}: too low for a burst of {args.burst}")
        return 1
    AsyncHTTPClient.configure(
        "tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=CLIENT_MAX_CLIENTS
    )
    print_header(args, open_files)
    if args.py_spy:
        print("  py-spy is recording the gateway: the numbers below are distorted")
    python_args = shlex.split(args.gateway_python_args)
    rows: list[LatencyRow] = []
    bursts: list[BurstResult] = []
    fakes = gateway = None
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as log_dir:
        try:
            fakes = start_fakes(args.slow_delay, log_dir)
            env = gateway_env(fakes, args.gateway_log_level, args.upstream_max_clients)
            if not args.skip_latency:
                gateway = start_gateway("gateway-latency", env, log_dir, python_args)
                scenarios = [
                    ("chat, concurrency 1", 1, args.requests_c1, False),
                    (
                        f"chat, concurrency {args.concurrency}",
                        args.concurrency,
                        args.requests_c50,
                        False,
                    ),
                ]
                if not args.no_optimiser:
                    scenarios.append(("+optimiser, conc. 1", 1, args.requests_c1, True))
                scenarios = [scenario for scenario in scenarios if scenario[2] > 0]
                with py_spy(gateway.proc.pid, args.py_spy, "latency"):
                    rows = asyncio.run(measure_latency(gateway, fakes, scenarios))
                print_latency(rows)
                finish_child(gateway)
                gateway = None
            for number in range(1, 0 if args.skip_burst else args.burst_rounds + 1):
                # A fresh gateway, so that its VmHWM is the peak of the burst alone.
                gateway = start_gateway(f"gateway-burst-{number}", env, log_dir, python_args)
                pid = gateway.proc.pid
                rss_before = proc_status_mb(pid, "VmRSS")
                overflows = listen_overflows()
                cpu_before = proc_cpu_seconds(pid)
                with py_spy(pid, args.py_spy, f"burst-{number}"):
                    burst = asyncio.run(run_burst(gateway, fakes, args.burst, args.verify_links))
                burst.gateway_cpu = proc_cpu_seconds(pid) - cpu_before
                burst.listen_overflows = listen_overflows() - overflows
                burst.rss_before_mb = rss_before
                burst.peak_rss_mb = proc_status_mb(pid, "VmHWM")
                burst.rss_after_mb = proc_status_mb(pid, "VmRSS")
                bursts.append(burst)
                print_burst(burst, args.slow_delay, f" (round {number} of {args.burst_rounds})")
                finish_child(gateway)
                gateway = None
        finally:
            finish_child(gateway)
            finish_child(fakes)
    passed = print_summary(rows, bursts)
    print(f"  (load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--serve-fakes``, be the fakes process)."""
    args = parse_args(argv)
    if args.serve_fakes:
        asyncio.run(serve_fakes(args.slow_delay))
        return 0
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted (every process this benchmark started has been stopped)")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
