"""Issue 15's figures: each hot-path figure of the gateway as a ratio against a reference measured
in the same run, with min / median / max over rounds.

Figures (``--only NAME`` runs one):

* ``cpu``: gateway CPU per chat completion at concurrency 50, every answer a new image URL
  that the gateway fetches and keeps; reference: the fakes' CPU per completion (the provider's
  answer and the image), in the same wrk run. Target: at most 0.4 ms.
* ``latency``: added p50 at concurrency 1: a chat completion through the gateway against the
  same client calling the provider and fetching the image itself. Target: at most 0.5 ms.
* ``burst``: 1000 chat completions at once with a provider taking 2 s: wall time through the
  gateway over the same client's wall time straight at the provider. Target: at most 1.05.
* ``images``: ``POST /v1/images/generations`` with ``response_format=b64_json``, the provider
  answering 100 KiB images in base64: gateway CPU per request; reference: the fake's CPU per
  request. Target: at most 0.8 ms.
* ``litellm``: the same Images API request through the gateway and through LiteLLM's proxy
  against the same fake: the throughput each reaches per CPU-second of its own process (requests
  over that process's CPU time in the same wrk run), and the fake alone as the ceiling; the
  requests per second measured are printed beside it. Target: at least 8 x. Needs LiteLLM in its
  own virtual environment (``--litellm-venv``); skipped otherwise.
* ``cache``: cache hits of a 100 KiB image: requests per CPU-second of the gateway's
  ``/image-proxy`` over a bare Tornado handler's (bytes from memory, precomputed ETag) on the
  same event loop. Target: at least 0.95.
* ``sse``: 200 streamed chat completions opened at once: p99 time to the first SSE byte through
  the gateway over a bare Tornado SSE handler's. Target: at most 1.5.

``cpu``, ``latency``, ``burst`` and ``images`` also measure the design floor in the same run: a
bare Tornado handler doing only what the request needs through the gateway's curl client
(hot_path_servers.serve_floor, checked before it is measured). It prints as ``floor`` and
``gateway/floor`` beside the issue's ratios and targets, which it leaves unchanged: what the
design can reach, next to where the gateway is.

Every server is a child process on 127.0.0.1 and a free port: the gateway as the real program
(``python -m tornado_imagegate``), the lean fakes and bare servers of hot_path_servers.py, the
cache-hit gateway of bench_image_proxy.py, LiteLLM's proxy. Load comes from wrk (throughput and
CPU figures) and from this process (latency, burst and SSE figures). The machine may be shared:
only the ratios of one run compare, and the load average is printed at the start and the end.

Run it from the repository root with the project installed and wrk on the path::

    python bench/bench_hot_path.py                 # every figure, 3 rounds (about 7 minutes)
    python bench/bench_hot_path.py --quick         # 1 round, short runs (about 2 minutes)
    python bench/bench_hot_path.py --only cache --rounds 5
    python bench/bench_hot_path.py --instructions  # cpu, images, cache in instructions (callgrind)

``--instructions`` counts, instead of timing, the user-space instructions per request of the
gateway and of the design floor for ``cpu`` and ``images``, and of the cache-hit gateway and the
bare image handler for ``cache``, each server under callgrind: on a shared machine they repeat
where CPU time does not (bench/README.rst says how far).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import bench_generation as generation
import bench_image_proxy as image_proxy
import pycurl
import tornado
from bench_generation import Child, finish_child, proc_cpu_seconds, start_child
from hot_path_servers import (
    IEND,
    FakeState,
    Route,
    serve_bare,
    serve_fakes,
    serve_floor,
    unique_png,
)
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tornado_imagegate.typos import throwaway_environment

HOST = "127.0.0.1"
# One key for the gateway and LiteLLM's proxy (its master key: LiteLLM refuses short ones).
API_KEY = "sk-bench-hot-path-" + "5e1f" * 16
PROMPT = "a cat"
URL_MODEL = "flux-fast"
SLOW_MODEL = "flux-slow"
B64_MODEL = "image-b64"
ANNOUNCED = generation.ADDRESSES  # a child's first line: {"url": ...}
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_LITELLM_VENV = BENCH_DIR / ".venv-litellm"
FIGURES = ("cpu", "latency", "burst", "images", "litellm", "cache", "sse")
B64_IMAGE_BYTES = 100 * 1024  # the b64 provider's images
FLOOR_LINK = re.compile(r"!\[image\]\([^)\s]*[?&]id=([0-9a-f]{64})\)")
REQUEST_TIMEOUT = 60.0

T = TypeVar("T")


# --- results ------------------------------------------------------------------------------


@dataclass
class Round:
    """One round of one figure: the ratio and the two measurements it divides."""

    ratio: float
    gateway: float
    reference: float
    note: str = ""
    extra: float = math.nan  # a figure's own further number (Figure.extra says which)
    floor: float = math.nan  # the design floor's value of what the target judges


@dataclass
class Figure:
    """A figure of the issue's table and its rounds."""

    name: str
    title: str
    unit: str  # of ``gateway`` and ``reference``
    reference: str
    target: str
    meets: Callable[[Round], bool]  # applied to the median round
    extra: str = ""  # format of Round.extra in the summary, e.g. "added {:.2f} ms"
    # The gateway's value of what the target judges, for figures measured against the floor
    # too (Round.floor holds the floor's value of the same); None: no floor for this figure.
    judged: Callable[[Round], float] | None = None
    floor_format: str = ""  # of Round.floor, e.g. "{:.3f} ms"
    rounds: list[Round] = field(default_factory=list)
    skipped: str = ""
    problems: list[str] = field(default_factory=list)

    def add(self, result: Round) -> None:
        """Keep a round and print it."""
        self.rounds.append(result)
        floor = ""
        if self.judged is not None:
            floor = (
                f"floor {self.floor_format.format(result.floor)} (gateway/floor "
                f"{self.over_floor(result):.2f})  "
            )
        print(
            f"  [{self.name}] round {len(self.rounds)}: ratio {result.ratio:.3f}  gateway "
            f"{result.gateway:.3f} {self.unit}  {self.reference} {result.reference:.3f} "
            f"{self.unit}  {floor}{result.note}",
            flush=True,
        )

    def over_floor(self, result: Round) -> float:
        """How far the gateway is from the design floor in a round: gateway / floor of what the
        target judges."""
        assert self.judged is not None
        return self.judged(result) / result.floor if result.floor else math.nan

    def median(self) -> Round:
        """The median of each field over the rounds."""
        return Round(
            statistics.median(r.ratio for r in self.rounds),
            statistics.median(r.gateway for r in self.rounds),
            statistics.median(r.reference for r in self.rounds),
            extra=statistics.median(r.extra for r in self.rounds),
            floor=statistics.median(r.floor for r in self.rounds),
        )


def figures() -> dict[str, Figure]:
    """The issue's table, one Figure per row, with its target."""
    return {
        figure.name: figure
        for figure in (
            Figure(
                "cpu",
                "gateway CPU per chat completion (c=50, unique image URLs)",
                "ms",
                "fakes",
                "gateway <= 0.4 ms",
                lambda r: r.gateway <= 0.4,
                judged=lambda r: r.gateway,
                floor_format="{:.3f} ms",
            ),
            Figure(
                "latency",
                "added p50 over calling the provider directly (c=1, unique URLs)",
                "ms",
                "direct",
                "added <= 0.5 ms",
                lambda r: r.extra <= 0.5,
                extra="added {:.3f} ms",
                judged=lambda r: r.extra,
                floor_format="added {:.3f} ms",
            ),
            Figure(
                "burst",
                "1000 concurrent completions, 2 s provider: wall",
                "s",
                "direct",
                "ratio <= 1.05",
                lambda r: r.ratio <= 1.05,
                judged=lambda r: r.ratio,
                floor_format="ratio {:.3f}",
            ),
            Figure(
                "images",
                "Images API, b64 answers of 100 KiB: gateway CPU per request",
                "ms",
                "fake",
                "gateway <= 0.8 ms",
                lambda r: r.gateway <= 0.8,
                judged=lambda r: r.gateway,
                floor_format="{:.3f} ms",
            ),
            Figure(
                "litellm",
                "the same work as LiteLLM's proxy: throughput per CPU-second",
                "req/CPU-s",
                "litellm",
                "ratio >= 8",
                lambda r: r.ratio >= 8.0,
                extra="ceiling (fake alone) {:.1f} x LiteLLM",
            ),
            Figure(
                "cache",
                "cache hit, 100 KiB: requests per CPU-second",
                "req/CPU-s",
                "bare",
                "ratio >= 0.95",
                lambda r: r.ratio >= 0.95,
            ),
            Figure(
                "sse",
                "200 streams opened at once: first SSE byte p99",
                "ms",
                "bare",
                "ratio <= 1.5",
                lambda r: r.ratio <= 1.5,
                extra="p50 ratio {:.3f}",
            ),
        )
    }


# --- processes ----------------------------------------------------------------------------


def start_script(
    name: str,
    script: Path,
    mode_args: Sequence[str],
    log_dir: str,
    launcher: Sequence[str] = (),
    timeout: float = generation.START_TIMEOUT,
) -> Child:
    """A Python script of this folder re-run as a server; it announces ``{"url": ...}``
    (``launcher`` goes before Python itself, e.g. valgrind)."""
    command = [*launcher, sys.executable, str(script), *mode_args]
    return start_child(
        name, command, dict(os.environ), log_dir, announcement=ANNOUNCED, timeout=timeout
    )


def start_fakes(args: argparse.Namespace, log_dir: str) -> Child:
    """The lean fakes of hot_path_servers: the three providers and the image host."""
    return start_script(
        "fakes",
        Path(__file__),
        [
            "--serve-fakes",
            "--url-image-kib",
            str(args.url_image_kib),
            "--slow-delay",
            str(args.slow_delay),
        ],
        log_dir,
    )


def child_url(child: Child) -> str:
    """The URL a child announced."""
    return child.addresses["url"]


def provider_routes(fakes_url: str) -> dict[str, Route]:
    """The three providers on the lean fakes, by model: the gateway's and the floor's."""
    return {
        URL_MODEL: Route(f"{fakes_url}/v1/images/generations", "k1"),
        SLOW_MODEL: Route(f"{fakes_url}/slow/v1/images/generations", "k2"),
        B64_MODEL: Route(f"{fakes_url}/b64/v1/images/generations", "k3"),
    }


def gateway_env(fakes_url: str) -> dict[str, str]:
    """The real gateway's configuration: three providers on the lean fakes, nothing kept."""
    routes = provider_routes(fakes_url)
    env = throwaway_environment(os.environ)
    env.update(
        {
            "AUTHORIZED_API_KEY": API_KEY,
            "FLUX_GEN_MODEL": URL_MODEL,
            "FLUX_GEN_API_BASE": routes[URL_MODEL].endpoint,
            "FLUX_GEN_API_KEY": routes[URL_MODEL].key,
            "IMAGE_GEN_MODEL_1": SLOW_MODEL,
            "IMAGE_GEN_KIND_1": "siliconflow",
            "IMAGE_GEN_API_BASE_1": routes[SLOW_MODEL].endpoint,
            "IMAGE_GEN_API_KEY_1": routes[SLOW_MODEL].key,
            "IMAGE_GEN_MODEL_2": B64_MODEL,
            "IMAGE_GEN_KIND_2": "openai-images",
            "IMAGE_GEN_API_BASE_2": routes[B64_MODEL].endpoint,
            "IMAGE_GEN_API_KEY_2": routes[B64_MODEL].key,
            "IMAGE_PROXY_ALLOW_PRIVATE_NETWORKS": "true",
            "IMAGE_GEN_TIMEOUT": "30",
            "LOG_LEVEL": "WARNING",  # no access line per request
        }
    )
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server that cannot pick its own)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class LiteLLM:
    """LiteLLM's proxy in a process of its own."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: str

    def stop(self) -> None:
        """Terminate it (and kill it if it lingers)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_litellm(venv: Path, fakes_url: str, log_dir: str) -> LiteLLM | str:
    """LiteLLM's proxy with one image model on the b64 fake; a reason string when it cannot."""
    executable = venv / "bin" / "litellm"
    if not executable.exists():
        return (
            f"no LiteLLM at {executable} (python -m venv {venv} && "
            f"{venv}/bin/pip install 'litellm[proxy]')"
        )
    config = os.path.join(log_dir, "litellm.yaml")
    with open(config, "w", encoding="utf-8") as out:
        out.write(
            "model_list:\n"
            f"  - model_name: {B64_MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{B64_MODEL}\n"
            f"      api_base: {fakes_url}/b64/v1\n"
            "      api_key: k-litellm\n"
            "litellm_settings:\n"
            "  drop_params: true\n"  # it would refuse response_format for an openai/ model
            "  telemetry: false\n"
            "  set_verbose: false\n"
        )
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": API_KEY,
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    env.pop("PYTHONPATH", None)
    log_path = os.path.join(log_dir, "litellm.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(executable), "--config", config, "--host", HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = LiteLLM(proc, f"http://{HOST}:{port}", log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.url}/health/liveliness", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    with open(log_path, encoding="utf-8", errors="replace") as log:
        tail = log.read()[-600:]
    status = "exited" if proc.returncode is not None else "did not answer within 120 s"
    return f"LiteLLM {status}: {tail!r}"


# --- wrk ----------------------------------------------------------------------------------


def wrk_script(directory: str, name: str, body: dict[str, Any]) -> str:
    """A wrk script POSTing this JSON body with the client key."""
    return generation.wrk_post_script(directory, name, body, API_KEY)


@dataclass
class WrkRun:
    """One wrk run and the CPU the watched processes used during it."""

    result: image_proxy.WrkResult
    cpu: dict[str, float]

    def ms_per_request(self, name: str) -> float:
        """CPU milliseconds of a watched process per completed request."""
        return 1000.0 * self.cpu[name] / self.result.requests if self.result.requests else math.nan


def run_wrk(
    label: str,
    url: str,
    seconds: float,
    connections: int,
    watched: dict[str, int],
    script: str | None = None,
) -> WrkRun:
    """wrk -t1 against ``url`` for ``seconds``; CPU time of each watched pid over the run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    command += ["--timeout", "30s"]  # a slow server is measured, not counted as failing
    if script:
        command += ["-s", script]
    before = {name: proc_cpu_seconds(pid) for name, pid in watched.items()}
    started = time.monotonic()
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    wall = time.monotonic() - started
    cpu = {name: proc_cpu_seconds(pid) - before[name] for name, pid in watched.items()}
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    result = image_proxy.parse_wrk(label, done.stdout)
    result.wall_seconds = wall
    return WrkRun(result, cpu)


def wait_idle(pid: int, within: float = 15.0) -> None:
    """Wait until a process uses under a tenth of a CPU (LiteLLM goes on working after wrk
    stops: what it still does would be charged to the next run)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = proc_cpu_seconds(pid)
        time.sleep(0.5)
        if proc_cpu_seconds(pid) - before < 0.05:
            return


def wrk_problem(run: WrkRun) -> str:
    """What went wrong in a wrk run, or an empty string."""
    result = run.result
    problems = []
    if result.non_2xx_3xx:
        problems.append(f"{result.non_2xx_3xx} non-2xx answers")
    if result.socket_errors:
        problems.append(f"socket errors {result.socket_errors}")
    return f"{result.label}: {', '.join(problems)}" if problems else ""


# --- the figures --------------------------------------------------------------------------


class Bench:
    """The run: its options, its processes, its figures."""

    def __init__(self, args: argparse.Namespace, log_dir: str) -> None:
        self.args = args
        self.log_dir = log_dir
        self.fakes: Child | None = None
        self.gateway: Child | None = None
        self.floor: Child | None = None
        self.scripts = {
            "chat": wrk_script(
                log_dir,
                "chat",
                {
                    "model": URL_MODEL,
                    "messages": [{"role": "user", "content": PROMPT}],
                    "enhance": False,
                },
            ),
            "images": wrk_script(
                log_dir,
                "images",
                {"model": B64_MODEL, "prompt": PROMPT, "response_format": "b64_json"},
            ),
        }

    # processes

    def start(self) -> None:
        """The fakes and the real gateway on them."""
        image_bytes = self.args.url_image_kib * 1024
        self.fakes = start_fakes(self.args, self.log_dir)
        env = gateway_env(self.fakes_url)
        self.gateway = generation.start_gateway("gateway", env, self.log_dir)
        print(
            f"  fakes {self.fakes_url} (pid {self.fakes.proc.pid}, URL images {image_bytes} B), "
            f"gateway {self.gateway.url} (pid {self.gateway.proc.pid})",
            flush=True,
        )

    def start_floor(self) -> None:
        """The design floor on the fakes (once, for the first figure that needs it), checked
        before it is measured."""
        if self.floor is not None:
            return
        self.floor = start_script(
            "floor", Path(__file__), ["--serve-floor", self.fakes_url], self.log_dir
        )
        print(f"  floor {self.floor_url} (pid {self.floor.proc.pid})", flush=True)
        check_floor(self.fakes_url, self.floor_url, self.args.url_image_kib * 1024)

    def stop(self) -> None:
        """Stop every child this run started."""
        finish_child(self.floor)
        finish_child(self.gateway)
        finish_child(self.fakes)

    @property
    def fakes_url(self) -> str:
        """The fakes' origin."""
        assert self.fakes is not None
        return child_url(self.fakes)

    @property
    def gateway_url(self) -> str:
        """The gateway's origin."""
        assert self.gateway is not None
        return self.gateway.url

    @property
    def floor_url(self) -> str:
        """The design floor's origin (after ``start_floor``)."""
        assert self.floor is not None
        return child_url(self.floor)

    def watched(self) -> dict[str, int]:
        """The processes whose CPU a wrk run reads."""
        assert self.fakes is not None and self.gateway is not None
        pids = {"gateway": self.gateway.proc.pid, "fakes": self.fakes.proc.pid}
        if self.floor is not None:
            pids["floor"] = self.floor.proc.pid
        return pids

    # figures

    def cpu_figure(self, figure: Figure, script: str, path: str, rounds: int) -> None:
        """Gateway and fakes CPU per request in the same wrk run, concurrency 50; the floor's
        CPU per request in a wrk run of its own with the same script, alternating which of the
        two goes first."""
        self.start_floor()
        urls = {"gateway": self.gateway_url + path, "floor": self.floor_url + path}
        watched = self.watched()
        for url in urls.values():
            run_wrk("warm-up", url, self.args.warmup, self.args.connections, watched, script)
        for number in range(rounds):
            runs = {}
            for name in ("gateway", "floor") if number % 2 == 0 else ("floor", "gateway"):
                runs[name] = run_wrk(
                    f"{figure.name} {name}",
                    urls[name],
                    self.args.duration,
                    self.args.connections,
                    watched,
                    script,
                )
                if problem := wrk_problem(runs[name]):
                    figure.problems.append(problem)
            run, floor = runs["gateway"], runs["floor"]
            gateway, fakes = run.ms_per_request("gateway"), run.ms_per_request("fakes")
            figure.add(
                Round(
                    gateway / fakes,
                    gateway,
                    fakes,
                    f"({run.result.requests} requests, {run.result.rps:.0f} req/s, "
                    f"gateway CPU share {run.cpu['gateway'] / run.result.wall_seconds:.0%}; "
                    f"floor {floor.result.rps:.0f} req/s, fakes "
                    f"{floor.ms_per_request('fakes'):.3f} ms in its run)",
                    floor=floor.ms_per_request("floor"),
                )
            )

    def measure_cpu(self, figure: Figure) -> None:
        """Figure ``cpu``."""
        self.cpu_figure(figure, self.scripts["chat"], "/v1/chat/completions", self.args.rounds)

    def measure_images(self, figure: Figure) -> None:
        """Figure ``images``."""
        self.cpu_figure(figure, self.scripts["images"], "/v1/images/generations", self.args.rounds)

    def measure_latency(self, figure: Figure) -> None:
        """Figure ``latency``: alternating blocks of direct, gateway and floor requests, one at
        a time."""
        self.start_floor()
        drive(self._latency(figure))

    async def _latency(self, figure: Figure) -> None:
        client = AsyncHTTPClient(force_instance=True, max_clients=10)
        try:
            direct = lambda: self._direct(client, "/v1/images/generations")  # noqa: E731
            via = lambda: self._completion(client, URL_MODEL)  # noqa: E731
            floor = lambda: self._completion(client, URL_MODEL, self.floor_url)  # noqa: E731
            sides = (("direct", direct), ("gateway", via), ("floor", floor))
            for _, operation in sides:
                for _ in range(50):
                    await operation()
            block = 10
            for _ in range(self.args.rounds):
                times: dict[str, list[float]] = {name: [] for name, _ in sides}
                for _ in range(0, self.args.latency_requests, block):
                    for name, operation in sides:
                        for _ in range(block):
                            started = time.perf_counter()
                            problem = await operation()
                            times[name].append(time.perf_counter() - started)
                            if problem:
                                figure.problems.append(f"{name}: {problem}")
                direct_p50 = 1000.0 * statistics.median(times["direct"])
                gateway_p50 = 1000.0 * statistics.median(times["gateway"])
                floor_p50 = 1000.0 * statistics.median(times["floor"])
                figure.add(
                    Round(
                        gateway_p50 / direct_p50,
                        gateway_p50,
                        direct_p50,
                        f"added {gateway_p50 - direct_p50:.3f} ms; floor p50 {floor_p50:.3f} ms "
                        f"({len(times['gateway'])} requests each)",
                        extra=gateway_p50 - direct_p50,
                        floor=floor_p50 - direct_p50,
                    )
                )
        finally:
            client.close()

    async def _direct(self, client: AsyncHTTPClient, path: str) -> str:
        """What a client does without the gateway: the provider's POST, then the image."""
        body = {"model": URL_MODEL, "prompt": PROMPT, "image_size": "1024x1024"}
        response = await client.fetch(post(self.fakes_url + path, body), raise_error=False)
        if response.code != 200:
            return generation.describe(response)
        image = await client.fetch(
            json.loads(response.body)["images"][0]["url"],
            raise_error=False,
            request_timeout=REQUEST_TIMEOUT,
        )
        return "" if image.code == 200 else "image " + generation.describe(image)

    async def _completion(
        self, client: AsyncHTTPClient, model: str, origin: str | None = None
    ) -> str:
        """One chat completion through the gateway, or the server at ``origin`` ("" when it
        answered 200)."""
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "enhance": False}
        origin = origin or self.gateway_url
        response = await client.fetch(
            post(origin + "/v1/chat/completions", body), raise_error=False
        )
        return "" if response.code == 200 else generation.describe(response)

    def measure_burst(self, figure: Figure) -> None:
        """Figure ``burst``: the same client's burst straight at the provider, via the gateway
        and via the floor, the order reversed every other round."""
        self.start_floor()
        for number in range(self.args.rounds):
            walls = {}
            order = ("direct", "gateway", "floor")
            for side in order if number % 2 == 0 else order[::-1]:
                walls[side], failures = drive(self._burst(side))
                if failures:
                    figure.problems.append(f"{side}: {len(failures)} failed, e.g. {failures[0]}")
            figure.add(
                Round(
                    walls["gateway"] / walls["direct"],
                    walls["gateway"],
                    walls["direct"],
                    f"floor {walls['floor']:.3f} s ({self.args.burst} requests each)",
                    floor=walls["floor"] / walls["direct"],
                )
            )

    async def _burst(self, side: str) -> tuple[float, list[str]]:
        client = AsyncHTTPClient(force_instance=True, max_clients=self.args.burst)
        try:
            if side == "direct":
                operation = lambda: self._direct(client, "/slow/v1/images/generations")  # noqa: E731
            elif side == "floor":
                operation = lambda: self._completion(client, SLOW_MODEL, self.floor_url)  # noqa: E731
            else:
                operation = lambda: self._completion(client, SLOW_MODEL)  # noqa: E731
            started = time.perf_counter()
            problems = await asyncio.gather(*[operation() for _ in range(self.args.burst)])
            return time.perf_counter() - started, [p for p in problems if p]
        finally:
            client.close()

    def measure_litellm(self, figure: Figure) -> None:
        """Figure ``litellm``: throughput of the gateway, LiteLLM and the fake alone."""
        venv = Path(self.args.litellm_venv)
        litellm = start_litellm(venv, self.fakes_url, self.log_dir)
        if isinstance(litellm, str):
            figure.skipped = litellm
            print(f"  [litellm] skipped: {litellm}", flush=True)
            return
        try:
            problem = check_litellm(litellm.url)
            if problem:
                figure.skipped = f"LiteLLM answered badly: {problem}"
                print(f"  [litellm] skipped: {figure.skipped}", flush=True)
                return
            script = self.scripts["images"]
            targets = {
                "gateway": self.gateway_url + "/v1/images/generations",
                "litellm": litellm.url + "/v1/images/generations",
                "fake": self.fakes_url + "/b64/v1/images/generations",
            }
            watched = {**self.watched(), "litellm": litellm.proc.pid}
            for url in targets.values():
                run_wrk("warm-up", url, self.args.warmup, self.args.connections, watched, script)
                wait_idle(litellm.proc.pid)
            for number in range(self.args.rounds):
                rates: dict[str, float] = {}
                per_cpu: dict[str, float] = {}
                names = list(targets)
                names = names if number % 2 == 0 else names[::-1]
                for name in names:
                    run = run_wrk(
                        name,
                        targets[name],
                        self.args.duration,
                        self.args.connections,
                        watched,
                        script,
                    )
                    if problem := wrk_problem(run):
                        figure.problems.append(problem)
                    rates[name] = run.result.rps
                    cpu = run.cpu["fakes" if name == "fake" else name]
                    per_cpu[name] = run.result.requests / cpu if cpu else math.nan
                    wait_idle(litellm.proc.pid)
                # Requests per CPU-second of each server, not requests per second: the runs are
                # 10 s apart, and on a shared 2-CPU machine what else runs meanwhile moved each
                # run's rate by up to 4 x (the gateway at 96 req/s in one run, 470 in the images
                # figure minutes before), while its CPU per request stayed within a few percent.
                figure.add(
                    Round(
                        per_cpu["gateway"] / per_cpu["litellm"],
                        per_cpu["gateway"],
                        per_cpu["litellm"],
                        f"ceiling (fake alone) {per_cpu['fake']:.0f} req/CPU-s = "
                        f"{per_cpu['fake'] / per_cpu['litellm']:.1f} x LiteLLM; requests per "
                        f"second measured: gateway {rates['gateway']:.0f}, litellm "
                        f"{rates['litellm']:.0f}, fake {rates['fake']:.0f} "
                        f"({rates['gateway'] / rates['litellm']:.1f} x)",
                        extra=per_cpu["fake"] / per_cpu["litellm"],
                    )
                )
        finally:
            litellm.stop()

    def measure_cache(self, figure: Figure) -> None:
        """Figure ``cache``: requests per CPU-second of /image-proxy and of the bare handler."""
        image_bytes = self.args.cache_image_kib * 1024
        gateway = bare = None
        try:
            gateway = start_script(
                "cache-gateway",
                BENCH_DIR / "bench_image_proxy.py",
                [
                    "--serve-gateway",
                    "--cache-bytes",
                    str(64 << 20),
                    "--image-bytes",
                    str(image_bytes),
                ],
                self.log_dir,
            )
            bare = start_script(
                "bare",
                Path(__file__),
                ["--serve-bare", "--cache-image-kib", str(self.args.cache_image_kib)],
                self.log_dir,
            )
            link = urlsplit(child_url(gateway))
            urls = {
                "gateway": child_url(gateway),
                "bare": f"{child_url(bare)}{link.path}?{link.query}",
            }
            pids = {"gateway": gateway.proc.pid, "bare": bare.proc.pid}
            for name, url in urls.items():
                with urllib.request.urlopen(url, timeout=10) as answer:
                    body = answer.read()
                if body != image_proxy.bench_image(image_bytes):
                    raise RuntimeError(f"{name} does not serve the benchmark image")
                run_wrk("warm-up", url, self.args.warmup, self.args.connections, pids)
            for number in range(self.args.rounds):
                per_cpu = {}
                names = ["gateway", "bare"] if number % 2 == 0 else ["bare", "gateway"]
                for name in names:
                    run = run_wrk(name, urls[name], self.args.duration, self.args.connections, pids)
                    if problem := wrk_problem(run):
                        figure.problems.append(problem)
                    per_cpu[name] = run.result.requests / run.cpu[name]
                figure.add(
                    Round(per_cpu["gateway"] / per_cpu["bare"], per_cpu["gateway"], per_cpu["bare"])
                )
        finally:
            finish_child(gateway)
            finish_child(bare)

    def measure_sse(self, figure: Figure) -> None:
        """Figure ``sse``: p99 of the first SSE byte, ``--streams`` opened at once."""
        bare = start_script(
            "bare-sse",
            Path(__file__),
            ["--serve-bare", "--cache-image-kib", str(self.args.cache_image_kib)],
            self.log_dir,
        )
        try:
            targets = {"gateway": self.gateway_url, "bare": child_url(bare)}
            for url in targets.values():  # warm-up
                drive(first_bytes(url, 20))
            for number in range(self.args.rounds):
                # Each burst's p99 and p50 per side; bursts of the two sides alternate, and
                # the ratio is the median over pairs of bursts, so that a slow moment of a
                # shared machine weighs on one pair only.
                p99s: dict[str, list[float]] = {"gateway": [], "bare": []}
                p50s: dict[str, list[float]] = {"gateway": [], "bare": []}
                for burst in range(self.args.sse_bursts):
                    first = (number + burst) % 2 == 0
                    for name in ("gateway", "bare") if first else ("bare", "gateway"):
                        times, problems = drive(first_bytes(targets[name], self.args.streams))
                        p99s[name].append(percentile(times, 99))
                        p50s[name].append(percentile(times, 50))
                        figure.problems += [f"{name}: {p}" for p in problems[:3]]
                pairs = list(zip(p99s["gateway"], p99s["bare"], strict=True))
                p50_pairs = list(zip(p50s["gateway"], p50s["bare"], strict=True))
                figure.add(
                    Round(
                        statistics.median(g / b for g, b in pairs),
                        statistics.median(p99s["gateway"]),
                        statistics.median(p99s["bare"]),
                        "p99 ratio of each burst pair "
                        + ", ".join(f"{g / b:.2f}" for g, b in pairs)
                        + f"; p50 {statistics.median(p50s['gateway']):.1f} / "
                        f"{statistics.median(p50s['bare']):.1f} ms",
                        extra=statistics.median(g / b for g, b in p50_pairs),
                    )
                )
        finally:
            finish_child(bare)


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run the client side of a figure on the servers' event loop (uvloop when installed): the
    lighter the client, the less of its own time a latency includes, on both sides alike."""
    with asyncio.Runner(loop_factory=image_proxy.server_loop()[1]) as runner:
        return runner.run(coroutine)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def post(url: str, body: dict[str, Any]) -> HTTPRequest:
    """A JSON POST with the client key."""
    return HTTPRequest(
        url,
        method="POST",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        body=json.dumps(body),
        request_timeout=REQUEST_TIMEOUT,
        connect_timeout=REQUEST_TIMEOUT,
    )


def check_floor(fakes_url: str, floor_url: str, url_image_bytes: int) -> None:
    """Raise unless the floor answers as a gateway must: a chat completion linking the very
    image the provider made (named by its SHA-256), the Images API the provider's base64 of it.

    The fakes number their images in turn, one counter for every provider, so with nothing else
    in flight the next two images are known: the fakes' own first-and-only images, rebuilt here.
    """
    images = FakeState(url_image_bytes, B64_IMAGE_BYTES, 0.0)
    probe = fetch_json(
        f"{fakes_url}/v1/images/generations",
        {"model": URL_MODEL, "prompt": PROMPT, "image_size": "1024x1024"},
    )
    number = int(re.search(r"/img/(\d+)\.png$", probe["images"][0]["url"]).group(1))
    chat = fetch_json(
        f"{floor_url}/v1/chat/completions",
        {"model": URL_MODEL, "messages": [{"role": "user", "content": PROMPT}]},
    )
    content = chat["choices"][0]["message"]["content"]
    link = FLOOR_LINK.fullmatch(content)
    expected = hashlib.sha256(unique_png(images.url_png, number + 1)).hexdigest()
    if chat.get("object") != "chat.completion" or not link or link.group(1) != expected:
        raise RuntimeError(f"the floor's chat completion links the wrong image: {content!r}")
    answer = fetch_json(
        f"{floor_url}/v1/images/generations",
        {"model": B64_MODEL, "prompt": PROMPT, "response_format": "b64_json"},
    )
    if answer["data"][0]["b64_json"] != images.b64.encode(number + 2):
        raise RuntimeError("the floor's Images API answer is not the provider's base64 image")


def fetch_json(url: str, body: dict[str, Any]) -> Any:
    """POST ``body`` with the client key; the JSON answer (an error unless 200)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def check_litellm(url: str) -> str:
    """One Images API request through LiteLLM: "" when it answered a b64 image."""
    request = urllib.request.Request(
        url + "/v1/images/generations",
        data=json.dumps(
            {"model": B64_MODEL, "prompt": PROMPT, "response_format": "b64_json"}
        ).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            data = json.load(answer)
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read()[:300]!r}"
    except OSError as exc:
        return str(exc)[:300]
    try:
        return "" if data["data"][0]["b64_json"] else "empty b64_json"
    except (KeyError, IndexError, TypeError):
        return f"unexpected answer {str(data)[:200]}"


async def first_bytes(origin: str, streams: int) -> tuple[list[float], list[str]]:
    """Open ``streams`` streamed chat completions at once; ms until each one's first SSE byte."""
    parts = urlsplit(origin)
    body = json.dumps(
        {
            "model": URL_MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "enhance": False,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.perf_counter()

    async def one() -> float | str:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(head + body)
            received = b""
            while b"data:" not in received.partition(b"\r\n\r\n")[2]:
                chunk = await reader.read(65536)
                if not chunk:
                    return f"closed before an SSE event: {received[:120]!r}"
                received += chunk
            first = time.perf_counter() - started
            if not received.startswith(b"HTTP/1.1 200"):
                return received[:120].decode("latin-1")
            while chunk := await reader.read(65536):  # the rest: a whole answer is checked
                received += chunk
            if b"![" not in received or b"data: [DONE]" not in received:
                return f"a stream without an image or [DONE]: {received[-160:]!r}"
            return 1000.0 * first
        finally:
            writer.close()

    outcomes = await asyncio.gather(*[one() for _ in range(streams)], return_exceptions=True)
    times = [o for o in outcomes if isinstance(o, float)]
    return times, [
        repr(o) if isinstance(o, BaseException) else o for o in outcomes if o not in times
    ]


# --- output -------------------------------------------------------------------------------


def print_header(args: argparse.Namespace) -> None:
    """What ran where, and how busy the machine was."""
    load = os.getloadavg()
    print("bench_hot_path: issue 15's figures, each against its reference in the same run")
    print(
        f"  Python {platform.python_version()}, Tornado {tornado.version}, "
        f"{pycurl.version.split()[0]}, servers on {image_proxy.server_loop()[0]}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"  load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; the machine "
        "may be shared: only the ratios of one run compare)"
    )
    print(
        f"  rounds {args.rounds}, wrk {args.duration:g} s x {args.connections} connections, "
        f"c=1 requests {args.latency_requests}, burst {args.burst} with a {args.slow_delay:g} s "
        f"provider, {args.streams} streams x {args.sse_bursts} bursts"
        + (" (--quick)" if args.quick else ""),
        flush=True,
    )


def number(value: float) -> str:
    """A measurement with the digits that matter."""
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def print_table(chosen: Sequence[Figure]) -> bool:
    """The summary: one line per figure, min / median / max of the ratio; True if all met."""
    print()
    print("Summary: ratio = gateway / reference, min / median / max over rounds; medians of both")
    print(
        "  floor: the design floor's value of what the target judges (a bare handler doing only "
        "what\n  the request needs, through the gateway's curl client); gateway/floor: the "
        "gateway's value of the\n  same over the floor's, median over rounds"
    )
    print(
        f"  {'figure':<8} {'ratio min / median / max':<26} {'gateway':<16} {'reference':<24} "
        f"{'floor':<18} {'gateway/floor':<14} {'target':<18} result"
    )
    all_met = True
    for figure in chosen:
        if figure.skipped or not figure.rounds:
            print(f"  {figure.name:<8} skipped: {figure.skipped or 'no rounds'}")
            all_met = False
            continue
        ratios = [r.ratio for r in figure.rounds]
        median = figure.median()
        met = figure.meets(median)
        all_met = all_met and met and not figure.problems
        verdict = "met" if met else "not met"
        if figure.problems:
            verdict += ", with failed requests"
        if figure.extra:
            verdict += "; " + figure.extra.format(median.extra)
        spread = f"{min(ratios):.3f} / {median.ratio:.3f} / {max(ratios):.3f}"
        reference = f"{figure.reference} {number(median.reference)} {figure.unit}"
        floor, over_floor = "-", "-"
        if figure.judged is not None:
            floor = figure.floor_format.format(median.floor)
            over_floor = f"{statistics.median(figure.over_floor(r) for r in figure.rounds):.2f}"
        print(
            f"  {figure.name:<8} {spread:<26} {number(median.gateway) + ' ' + figure.unit:<16} "
            f"{reference:<24} {floor:<18} {over_floor:<14} {figure.target:<18} {verdict}"
        )
    print()
    for figure in chosen:
        print(f"  {figure.name}: {figure.title}")
        for problem in figure.problems[:5]:
            print(f"    !! {problem}")
    load = os.getloadavg()
    print(f"  load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    return all_met


# --- instruction counts (--instructions) ------------------------------------------------------

INSTRUCTION_FIGURES = ("cpu", "images", "cache")
CALLGRIND_TOOLS = ("valgrind", "callgrind_control")
# Python under callgrind starts in 20-60 s on a quiet machine; a busy one takes longer.
CALLGRIND_START_TIMEOUT = 600.0
CALLGRIND_CONTROL_TIMEOUT = 120.0
INSTRUCTION_WARMUP = 100  # requests before the counters are zeroed, once per server and figure
INSTRUCTION_REQUEST_TIMEOUT = 300.0  # a request to a server under callgrind is ~50 x slower
VALGRIND_LINE = re.compile(r"==\d+== ")  # valgrind's own messages on a server's stderr


@dataclass(frozen=True)
class CountedRequest:
    """What an instruction figure sends, and how each answer is checked."""

    title: str
    path: str
    body: dict[str, Any] | None  # None: a GET of the server's own URL (a cache hit)
    check: Callable[[Any], str]  # an answer's JSON (a GET's: its bytes) -> "" when it is right


def check_chat_answer(answer: Any) -> str:
    """Empty when ``answer`` is a chat completion whose message links an image, else what is
    wrong."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return f"not a chat completion: {str(answer)[:200]}"
    if answer.get("object") != "chat.completion" or not isinstance(content, str):
        return f"not a chat completion: {str(answer)[:200]}"
    if not generation.MARKDOWN_IMAGE.search(content):
        # The query of a link is cut: a signed link is a secret, even in a benchmark.
        shown = re.sub(r"\?[^)\s]*", "?...", content[:200])
        return f"a chat completion without an image link: {shown!r}"
    return ""


def images_answer_check(provider_b64_head: str) -> Callable[[Any], str]:
    """The check of an Images API answer: its ``b64_json`` is valid base64 of a whole PNG (up to
    its end chunk) of at least the provider's size that begins as the provider's images do."""

    def check(answer: Any) -> str:
        try:
            encoded = answer["data"][0]["b64_json"]
        except (KeyError, IndexError, TypeError):
            return f"not an Images API answer: {str(answer)[:200]}"
        if not isinstance(encoded, str) or not encoded.startswith(provider_b64_head):
            return "b64_json is not the provider's image"
        try:
            image = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return "b64_json is not base64"
        if len(image) < B64_IMAGE_BYTES or not image.endswith(IEND):
            return f"b64_json holds {len(image)} bytes, not a whole image of the provider's"
        return ""

    return check


def counted_requests(args: argparse.Namespace) -> dict[str, CountedRequest]:
    """The request of each instruction figure: the bench's own for ``cpu`` and ``images``."""
    images = FakeState(args.url_image_kib * 1024, B64_IMAGE_BYTES, 0.0)
    return {
        "cpu": CountedRequest(
            "chat completion, URL provider, unique images",
            "/v1/chat/completions",
            {
                "model": URL_MODEL,
                "messages": [{"role": "user", "content": PROMPT}],
                "enhance": False,
            },
            check_chat_answer,
        ),
        "images": CountedRequest(
            f"Images API, b64 answers of {B64_IMAGE_BYTES // 1024} KiB",
            "/v1/images/generations",
            {"model": B64_MODEL, "prompt": PROMPT, "response_format": "b64_json"},
            images_answer_check(images.b64.head),
        ),
        "cache": CountedRequest(
            f"cache hit of {args.cache_image_kib} KiB; its floor is the bare image handler "
            "(the figure's ratio, requests per instruction, is floor/gateway: >= 0.95)",
            "",
            None,
            cached_image_check(image_proxy.bench_image(args.cache_image_kib * 1024)),
        ),
    }


def cached_image_check(image: bytes) -> Callable[[Any], str]:
    """The check of a cache hit: the very bytes of the benchmark's image."""

    def check(body: Any) -> str:
        return "" if body == image else f"not the benchmark's image ({len(body)} bytes)"

    return check


def missing_callgrind() -> str:
    """The callgrind tools not on the path, as one line ("" when both are there)."""
    missing = [tool for tool in CALLGRIND_TOOLS if shutil.which(tool) is None]
    if not missing:
        return ""
    return (
        f"--instructions needs {' and '.join(missing)} on the path (apt-get install valgrind); "
        "nothing was measured"
    )


@dataclass
class CallgrindServer:
    """A server running under callgrind; ``count`` reads what it executed between the counters'
    zeroing and their dump."""

    child: Child
    url: str
    out_file: str
    dumps: int = 0

    @staticmethod
    def launcher(out_file: str) -> list[str]:
        """The command line prefix that runs a program under callgrind (user-space
        instructions only, no per-instruction detail, the counts written to ``out_file``)."""
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]

    def control(self, option: str) -> None:
        """Send callgrind_control ``option`` to the server (it says OK when done: its exit
        status is 0 even when it fails)."""
        done = subprocess.run(
            ["callgrind_control", option, str(self.child.proc.pid)],
            capture_output=True,
            text=True,
            timeout=CALLGRIND_CONTROL_TIMEOUT,
            check=False,
        )
        if "OK." not in done.stdout:
            raise RuntimeError(
                f"callgrind_control {option} {self.child.name} failed: "
                f"{(done.stdout + done.stderr).strip()[:300]}"
            )

    def finish(self) -> None:
        """Show what the server wrote to stderr besides valgrind's own lines (all of it if it
        died), then stop it."""
        if self.child.proc.poll() is not None:
            finish_child(self.child)
            return
        with open(self.child.log_path, encoding="utf-8", errors="replace") as log:
            own = [line for line in log if not VALGRIND_LINE.match(line)]
        if own:
            print(f"{self.child.name} stderr (last lines):\n{''.join(own[-10:])}")
        generation.stop_child(self.child)

    def count(self) -> int:
        """Dump the counters and zero them (callgrind does both); the instructions since the
        last zeroing, from the dump's ``totals:`` line."""
        self.control("-d")
        self.dumps += 1
        path = f"{self.out_file}.{self.dumps}"
        with open(path, encoding="utf-8", errors="replace") as dump:
            for line in dump:
                if line.startswith("totals:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no totals line in the callgrind dump {path}")


def start_callgrind_gateway(fakes_url: str, log_dir: str) -> CallgrindServer:
    """The real gateway under callgrind, started as the bench starts it (same command line,
    environment and checkout)."""
    out_file = os.path.join(log_dir, "gateway.callgrind")
    child = generation.start_gateway(
        "gateway-callgrind",
        gateway_env(fakes_url),
        log_dir,
        launcher=CallgrindServer.launcher(out_file),
        timeout=CALLGRIND_START_TIMEOUT,
    )
    return CallgrindServer(child, child.url, out_file)


def start_callgrind_cache_pair(
    args: argparse.Namespace, log_dir: str
) -> tuple[CallgrindServer, CallgrindServer]:
    """The cache-hit gateway of bench_image_proxy.py and the bare image handler, each under
    callgrind, serving the same image (the bare one at the gateway's link, query ignored)."""
    image_bytes = args.cache_image_kib * 1024
    gateway_out = os.path.join(log_dir, "cache-gateway.callgrind")
    gateway = start_script(
        "cache-gateway-callgrind",
        BENCH_DIR / "bench_image_proxy.py",
        ["--serve-gateway", "--cache-bytes", str(64 << 20), "--image-bytes", str(image_bytes)],
        log_dir,
        launcher=CallgrindServer.launcher(gateway_out),
        timeout=CALLGRIND_START_TIMEOUT,
    )
    bare_out = os.path.join(log_dir, "bare.callgrind")
    bare = start_script(
        "bare-callgrind",
        Path(__file__),
        ["--serve-bare", "--cache-image-kib", str(args.cache_image_kib)],
        log_dir,
        launcher=CallgrindServer.launcher(bare_out),
        timeout=CALLGRIND_START_TIMEOUT,
    )
    link = urlsplit(child_url(gateway))
    bare_url = f"{child_url(bare)}{link.path}?{link.query}"
    return CallgrindServer(gateway, child_url(gateway), gateway_out), CallgrindServer(
        bare, bare_url, bare_out
    )


def start_callgrind_floor(fakes_url: str, log_dir: str) -> CallgrindServer:
    """The design floor under callgrind, checked before it is measured."""
    out_file = os.path.join(log_dir, "floor.callgrind")
    child = start_script(
        "floor-callgrind",
        Path(__file__),
        ["--serve-floor", fakes_url],
        log_dir,
        launcher=CallgrindServer.launcher(out_file),
        timeout=CALLGRIND_START_TIMEOUT,
    )
    return CallgrindServer(child, child_url(child), out_file)


async def send_checked(
    url: str, request: CountedRequest, count: int, concurrency: int
) -> list[str]:
    """Send ``count`` requests, ``concurrency`` at a time; what was wrong with the
    answers (empty when every one was 200 and of the right shape)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    left = iter(range(count))
    problems: list[str] = []

    async def worker() -> None:
        for _ in left:
            if request.body is None:
                http = HTTPRequest(url + request.path)
            else:
                http = post(url + request.path, request.body)
            http.request_timeout = http.connect_timeout = INSTRUCTION_REQUEST_TIMEOUT
            response = await client.fetch(http, raise_error=False)
            if response.code != 200:
                problems.append(generation.describe(response))
                continue
            if request.body is None:
                if problem := request.check(response.body):
                    problems.append(problem)
                continue
            try:
                answer = json.loads(response.body)
            except ValueError:
                problems.append(f"not JSON: {response.body[:120]!r}")
                continue
            if problem := request.check(answer):
                problems.append(problem)

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    # Not closed when interrupted: curl's pending timer would then fire on a closed client.
    client.close()
    return problems


def count_instructions(
    server: CallgrindServer, request: CountedRequest, args: argparse.Namespace
) -> tuple[list[float], list[str]]:
    """Instructions per request of ``server`` in each round (after a warm-up), and what was
    wrong with any answer."""
    # The warm-up is counted and thrown away: the first count after the first zeroing ran
    # 2 to 5 % above the next ones, even after 400 warm-up requests.
    server.control("-z")
    problems = drive(
        send_checked(server.url, request, INSTRUCTION_WARMUP, args.instructions_concurrency)
    )
    server.count()
    per_request = []
    for _ in range(args.rounds):
        server.control("-z")
        problems += drive(
            send_checked(
                server.url, request, args.instructions_requests, args.instructions_concurrency
            )
        )
        per_request.append(server.count() / args.instructions_requests)
    return per_request, problems


def measure_instructions(args: argparse.Namespace) -> int:
    """``--instructions``: the gateway's and the floor's instructions per request for the
    ``cpu`` and ``images`` requests, each server under callgrind in its own process."""
    if missing := missing_callgrind():
        print(missing)
        return 2
    AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient")
    chosen = args.only or list(INSTRUCTION_FIGURES)
    load = os.getloadavg()
    print("bench_hot_path --instructions: user-space instructions per request under callgrind")
    valgrind = subprocess.run(
        ["valgrind", "--version"], capture_output=True, text=True, check=False
    )
    print(
        f"  Python {platform.python_version()}, Tornado {tornado.version}, "
        f"{valgrind.stdout.strip()}; load average {load[0]:.2f} (instruction counts do not "
        "depend on it)"
    )
    print(
        f"  {args.instructions_requests} requests per round at concurrency "
        f"{args.instructions_concurrency} after {INSTRUCTION_WARMUP} warm-up requests, rounds "
        f"{args.rounds}; every answer checked",
        flush=True,
    )
    requests = counted_requests(args)
    results: dict[str, dict[str, list[float]]] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-hot-path-instructions-") as log_dir:
        fakes = gateway = floor = cache_gateway = bare = None
        try:
            if any(name != "cache" for name in chosen):
                fakes = start_fakes(args, log_dir)
                fakes_url = child_url(fakes)
                print("  starting the gateway and the floor under callgrind (a minute or two)")
                gateway = start_callgrind_gateway(fakes_url, log_dir)
                floor = start_callgrind_floor(fakes_url, log_dir)
                check_floor(fakes_url, floor.url, args.url_image_kib * 1024)
                print(
                    f"  fakes {fakes_url}, gateway {gateway.url} (pid {gateway.child.proc.pid}), "
                    f"floor {floor.url} (pid {floor.child.proc.pid})",
                    flush=True,
                )
            if "cache" in chosen:
                print("  starting the cache-hit gateway and the bare handler under callgrind")
                cache_gateway, bare = start_callgrind_cache_pair(args, log_dir)
            for name in chosen:
                request = requests[name]
                results[name] = {}
                pair = (cache_gateway, bare) if name == "cache" else (gateway, floor)
                for side, server in zip(("gateway", "floor"), pair, strict=True):
                    assert server is not None
                    counts, wrong = count_instructions(server, request, args)
                    results[name][side] = counts
                    problems += [f"{name} {side}: {p}" for p in wrong[:3]]
                    if wrong:
                        problems.append(f"{name} {side}: {len(wrong)} wrong answers in all")
                    print(
                        f"  [{name}] {side}: "
                        + ", ".join(f"{c / 1e6:.3f}" for c in counts)
                        + " M instructions per request",
                        flush=True,
                    )
        finally:
            for server in (floor, gateway, bare, cache_gateway):
                if server is not None:
                    server.finish()
            finish_child(fakes)
    print_instructions(chosen, requests, results, problems)
    return 1 if problems else 0


def print_instructions(
    chosen: Sequence[str],
    requests: dict[str, CountedRequest],
    results: dict[str, dict[str, list[float]]],
    problems: Sequence[str],
) -> None:
    """The summary: instructions per request of each side (min / median / max over rounds)
    and the gateway over the floor."""
    print()
    print("Summary: M instructions per request (user space, min / median / max over rounds)")
    print(f"  {'figure':<8} {'gateway':<24} {'floor':<24} gateway/floor")
    for name in chosen:
        sides = results.get(name, {})
        if len(sides) < 2:
            print(f"  {name:<8} not measured")
            continue
        spreads = {
            side: f"{min(c) / 1e6:.3f} / {statistics.median(c) / 1e6:.3f} / {max(c) / 1e6:.3f}"
            for side, c in sides.items()
        }
        ratio = statistics.median(sides["gateway"]) / statistics.median(sides["floor"])
        extra = f"  (floor/gateway {1 / ratio:.3f})" if name == "cache" else ""
        print(f"  {name:<8} {spreads['gateway']:<24} {spreads['floor']:<24} {ratio:.3f}{extra}")
    print()
    for name in chosen:
        print(f"  {name}: {requests[name].title}")
    for problem in problems[:10]:
        print(f"    !! {problem}")


# --- driver -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``--serve-*`` are the modes of the child processes)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=FIGURES, action="append", help="run this figure only")
    parser.add_argument(
        "--rounds", type=int, help="rounds of each figure (3; 1 with --instructions)"
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk warm-up (2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument(
        "--latency-requests", type=int, default=500, help="c=1 requests per side per round"
    )
    parser.add_argument("--burst", type=int, default=1000, help="concurrent completions (1000)")
    parser.add_argument("--slow-delay", type=float, default=2.0, help="slow provider's seconds")
    parser.add_argument("--streams", type=int, default=200, help="SSE streams opened at once")
    parser.add_argument("--sse-bursts", type=int, default=3, help="SSE bursts per side per round")
    parser.add_argument("--url-image-kib", type=int, default=9, help="URL images' KiB (9)")
    parser.add_argument("--cache-image-kib", type=int, default=100, help="cached image KiB")
    parser.add_argument(
        "--litellm-venv",
        default=str(DEFAULT_LITELLM_VENV),
        help=f"virtual environment with litellm[proxy] ({DEFAULT_LITELLM_VENV})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 3 s wrk runs, fewer requests"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request of the gateway and its floor under callgrind (figures "
        "cpu, images and cache) instead of the timed figures",
    )
    parser.add_argument(
        "--instructions-requests",
        type=int,
        default=300,
        help="requests counted per round with --instructions (300)",
    )
    parser.add_argument(
        "--instructions-concurrency",
        type=int,
        default=10,
        help="requests at a time with --instructions (10)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--serve-floor", metavar="FAKES_ORIGIN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.instructions else 3  # instruction counts repeat closely
    if args.instructions:
        if set(args.only or ()) - set(INSTRUCTION_FIGURES):
            parser.error(f"--instructions measures {' and '.join(INSTRUCTION_FIGURES)} only")
        if min(args.instructions_requests, args.instructions_concurrency) <= 0:
            parser.error("--instructions-requests and --instructions-concurrency must be > 0")
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3, 1
        args.latency_requests, args.sse_bursts = 200, 2
    if min(args.rounds, args.duration, args.connections, args.burst, args.streams) <= 0:
        parser.error("--rounds, --duration, --connections, --burst and --streams must be > 0")
    return args


def run(args: argparse.Namespace) -> int:
    """Start the servers, measure the chosen figures, print the table."""
    if shutil.which("wrk") is None:
        print("wrk is missing (apt-get install wrk)")
        return 2
    generation.raise_open_files_limit(max(8192, 4 * args.burst + 1024))
    AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient")
    print_header(args)
    table = figures()
    chosen = [table[name] for name in (args.only or FIGURES)]
    with tempfile.TemporaryDirectory(prefix="bench-hot-path-") as log_dir:
        bench = Bench(args, log_dir)
        try:
            bench.start()
            for figure in chosen:
                print(f"\n{figure.name}: {figure.title}", flush=True)
                getattr(bench, f"measure_{figure.name}")(figure)
        finally:
            bench.stop()
    return 0 if print_table(chosen) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, or one of its server processes."""
    args = parse_args(argv)
    if args.serve_fakes:
        asyncio.run(serve_fakes(args.url_image_kib * 1024, B64_IMAGE_BYTES, args.slow_delay))
        return 0
    if args.serve_floor:
        # The same event loop as the gateway's (uvloop when installed).
        with asyncio.Runner(loop_factory=image_proxy.server_loop()[1]) as runner:
            runner.run(serve_floor(provider_routes(args.serve_floor)))
        return 0
    if args.serve_bare:
        image = image_proxy.bench_image(args.cache_image_kib * 1024)
        with asyncio.Runner(loop_factory=image_proxy.server_loop()[1]) as runner:
            runner.run(serve_bare(image))
        return 0
    try:
        return measure_instructions(args) if args.instructions else run(args)
    except KeyboardInterrupt:
        print("interrupted (every process this benchmark started has been stopped)")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
