"""Benchmark the gateway's ``/image-proxy`` cache-hit path against a bare Tornado handler.

One run on this machine measures, with wrk (keep-alive, 50 connections by default):

* cache-hit requests per second for a 100 KiB PNG served by the gateway (``make_app`` +
  ``make_http_server``, the image kept with ``ImageStore.keep_bytes``), against a bare Tornado
  handler that writes the same bytes from memory, in the same run, and the ratio of the two
  (target: at least 0.9);
* 304 revalidations per second (``If-None-Match`` with the image's ETag) against the gateway;
* the resident memory of a fresh gateway process before and after storing twice its
  ``IMAGE_CACHE_MAX_BYTES`` of distinct 100 KiB images (its growth must stay near the bound).

Each server runs in its own process (this script re-invoked with ``--serve-gateway`` or
``--serve-bare``), so wrk, the servers and this driver never share a Python process, and the
gateway's RSS can be read from ``/proc``. With two or more CPUs and ``taskset`` available, the
servers are pinned to the first CPU and wrk to the others.

Run it from the repository root with the project installed, e.g.::

    python bench/bench_image_proxy.py            # about 100 seconds with the defaults
    python bench/bench_image_proxy.py --duration 5 --rounds 1

It needs wrk (``apt-get install wrk``). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import re
import select
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tornado
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornado_imagegate.app import make_app
from tornado_imagegate.config import load_settings
from tornado_imagegate.logsafe import configure_logging
from tornado_imagegate.server import configure_http_client, event_loop_factory, make_http_server

# The fakes and image bytes shared with the tests (tests/fakes, not installed with the gateway).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes import bare_image_app, emit, noise_png_of_size, serve_until_stdin_closes

HOST = "127.0.0.1"
API_KEY = "bench-key"
TARGET_RATIO = 0.9
# "Near the bound": the script's own threshold for the memory check.
MEMORY_TOLERANCE = 1.25
FILL_FACTOR = 2  # the memory phase stores this many times the cache's bound
IMAGE_SEED = 20240601  # both servers build the same image bytes from this seed
# A run in which the server had less than this share of its CPU was disturbed by other processes.
CONTENDED_SHARE = 0.9
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0
FILL_TIMEOUT = 300.0


# --- the image: a real PNG of an exact size -----------------------------------------------


def bench_image(size: int) -> bytes:
    """The benchmark's image: the same bytes in every process."""
    return noise_png_of_size(size, random.Random(IMAGE_SEED))


# --- server processes ---------------------------------------------------------------------


def pin_to_cpu(cpu: int | None) -> None:
    """Run this process on one CPU only (when the driver asks for it)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def kept_link(kept: Any) -> str:
    """The link ``keep_bytes`` returned: a ``KeptImage``'s ``link`` (a plain str before)."""
    return kept if isinstance(kept, str) else kept.link


async def run_gateway(cache_bytes: int, image_bytes: int, access_log: bool) -> None:
    """The gateway as ``imagegate`` builds it, with the benchmark image kept in its store."""
    settings = load_settings(
        {"AUTHORIZED_API_KEY": API_KEY, "IMAGE_CACHE_MAX_BYTES": str(cache_bytes)}
    )
    if access_log:
        configure_logging(settings.log_level)  # as serve() does: one line per request
    configure_http_client(settings)
    app = make_app(settings)
    server = make_http_server(app)
    sockets = bind_sockets(0, HOST)
    server.add_sockets(sockets)
    base_url = f"http://{HOST}:{sockets[0].getsockname()[1]}"
    store = app.services.store
    url = kept_link(store.keep_bytes(bench_image(image_bytes), base_url))
    first_id = url.rsplit("=", 1)[1]

    def fill() -> dict[str, Any]:
        """Store distinct images until FILL_FACTOR times the bound has gone in."""
        rng = random.Random(IMAGE_SEED + 1)
        started = time.perf_counter()
        stored = images = 0
        while stored < FILL_FACTOR * store.cache.max_bytes:
            store.keep_bytes(noise_png_of_size(image_bytes, rng), base_url)
            stored += image_bytes
            images += 1
        return {
            "stored_bytes": stored,
            "images": images,
            "seconds": time.perf_counter() - started,
            "current_bytes": store.cache.current_bytes,
            "max_bytes": store.cache.max_bytes,
            "items": len(store.cache),
            "evictions": store.cache.evictions,
            "first_image_kept": first_id in store.cache,
        }

    emit({"url": url})
    await serve_until_stdin_closes({"fill": fill})
    server.stop()


async def run_bare(image_bytes: int, server_settings: str) -> None:
    """A plain Tornado handler serving the same bytes, on a default HTTPServer or on the
    gateway's (``make_http_server``: the same inbound limits and idle timeouts)."""
    app = bare_image_app(r"/image-proxy", bench_image(image_bytes))
    server = make_http_server(app) if server_settings == "gateway" else HTTPServer(app)
    sockets = bind_sockets(0, HOST)
    server.add_sockets(sockets)
    emit({"url": f"http://{HOST}:{sockets[0].getsockname()[1]}/image-proxy"})
    await serve_until_stdin_closes({})
    server.stop()


# --- the driver's view of a server process ------------------------------------------------


class ServerProcess:
    """This script re-run in a server mode; talks JSON lines over its stdin and stdout."""

    def __init__(
        self, name: str, mode_args: Sequence[str], cpu: int | None, quiet: bool = False
    ) -> None:
        self.name = name
        argv = [sys.executable, os.path.abspath(__file__), *mode_args]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        checkout = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (checkout, os.environ.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": path},  # the servers run this checkout's code
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
        )
        try:
            self.url: str = self.receive(START_TIMEOUT)["url"]
        except BaseException:
            self.stop()
            raise

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next JSON line from the process."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            try:
                status = f"exit code {self.proc.wait(timeout=1)}"
            except subprocess.TimeoutExpired:
                status = f"no answer within {timeout:.0f} s"
            raise RuntimeError(f"{self.name} server did not start or answer ({status})")
        return json.loads(line)

    def command(self, command: str, timeout: float) -> dict[str, Any]:
        """Send a command and wait for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.receive(timeout)

    def rss_kib(self) -> dict[str, int]:
        """VmRSS (resident now) and VmHWM (peak resident) in KiB, from /proc."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith("Vm"))
        return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}

    def cpu_seconds(self) -> float:
        """User and system CPU time used so far, from /proc/<pid>/stat."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        """Close its stdin (it exits by itself), then make sure it is gone."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- wrk ----------------------------------------------------------------------------------

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass
class WrkResult:
    """What one wrk run reported."""

    label: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bytes_read: float
    socket_errors: str
    non_2xx_3xx: int
    wall_seconds: float = 0.0
    server_cpu_seconds: float = 0.0

    @property
    def bytes_per_response(self) -> float:
        """Average bytes read per response, headers included (wrk rounds its total)."""
        return self.bytes_read / self.requests if self.requests else 0.0

    @property
    def server_cpu_share(self) -> float:
        """The server's CPU time over the run's wall time: near 1.0 when it had its CPU."""
        return self.server_cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Requests per second of the server's own CPU time (less sensitive to contention)."""
        return self.requests / self.server_cpu_seconds if self.server_cpu_seconds else 0.0

    def line(self) -> str:
        """One printed line per run."""
        problems = []
        if self.socket_errors:
            problems.append(f"socket errors: {self.socket_errors}")
        if self.non_2xx_3xx:
            problems.append(f"{self.non_2xx_3xx} non-2xx/3xx answers")
        if self.server_cpu_share < CONTENDED_SHARE:
            problems.append("server short of CPU")
        return (
            f"  {self.label:<20} {self.rps:>6.0f} req/s  p50 {self.p50_ms:6.2f} ms"
            f"  p99 {self.p99_ms:6.2f} ms  {self.bytes_per_response:>6.0f} B/answer"
            f"  server CPU {100 * self.server_cpu_share:3.0f}%"
            f" {self.per_cpu_second:>6.0f} req/CPU-s"
            + (f"  !! {'; '.join(problems)}" if problems else "")
        )


def parse_wrk(label: str, output: str) -> WrkResult:
    """Read Requests/sec, the latency distribution, totals and errors from wrk's output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    totals = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", output)
    if rps is None or totals is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    latency = {
        int(percent): float(value) * _TIME_UNITS[unit]
        for percent, value, unit in re.findall(
            r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M
        )
    }
    socket_errors = re.search(r"Socket errors: (.*)$", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        label=label,
        rps=float(rps.group(1)),
        p50_ms=latency.get(50, float("nan")),
        p99_ms=latency.get(99, float("nan")),
        requests=int(totals.group(1)),
        bytes_read=float(totals.group(2)) * _UNITS[totals.group(3)],
        socket_errors=socket_errors.group(1) if socket_errors else "",
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


@dataclass
class Wrk:
    """wrk with this run's parameters."""

    threads: int
    connections: int
    prefix: list[str]  # e.g. ["taskset", "-c", "1"]

    def run(
        self, label: str, server: ServerProcess, seconds: int, headers: Sequence[str] = ()
    ) -> WrkResult:
        """One wrk run against a server, with the server's CPU time; printed as it comes."""
        argv = [*self.prefix, "wrk", f"-t{self.threads}", f"-c{self.connections}"]
        argv += [f"-d{seconds}s", "--latency"]
        for header in headers:
            argv += ["-H", header]
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        done = subprocess.run(
            [*argv, server.url], capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        wall, cpu = time.monotonic() - started, server.cpu_seconds() - cpu_before
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
        result = parse_wrk(label, done.stdout)
        result.wall_seconds, result.server_cpu_seconds = wall, cpu
        print(result.line(), flush=True)
        return result


# --- checks before measuring --------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer, read with http.client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        """A header's value, or ''."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    @property
    def header_bytes(self) -> int:
        """Size of the header lines as sent (without the status line)."""
        return sum(len(k) + len(v) + 4 for k, v in self.headers)


def fetch(url: str, headers: dict[str, str] | None = None) -> Answer:
    """GET ``url`` on 127.0.0.1."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or HOST, parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def check_servers(gateway_url: str, bare_url: str, image: bytes) -> str:
    """Both serve the image; the gateway answers 304 to its ETag. Returns the ETag."""
    gateway, bare = fetch(gateway_url), fetch(bare_url)
    for name, answer in (("gateway", gateway), ("bare", bare)):
        if answer.status != 200 or answer.body != image:
            raise RuntimeError(f"{name} server did not serve the image (status {answer.status})")
        print(
            f"  {name:<8} 200, {len(answer.body)}-byte image/png body, "
            f"{len(answer.headers)} headers ({answer.header_bytes} bytes): "
            + ", ".join(k for k, _ in answer.headers)
        )
    etag = gateway.header("ETag")
    if not etag:
        raise RuntimeError("the gateway's answer has no ETag")
    revalidated = fetch(gateway_url, {"If-None-Match": etag})
    if revalidated.status != 304 or revalidated.body:
        raise RuntimeError(f"If-None-Match {etag} got {revalidated.status}, not an empty 304")
    print(
        f"  gateway  If-None-Match: {etag} -> 304, empty body, "
        f"{len(revalidated.headers)} headers ({revalidated.header_bytes} bytes)"
    )
    return etag


# --- the benchmark ------------------------------------------------------------------------


def median_result(results: list[WrkResult]) -> dict[str, float]:
    """Medians over the runs (and the best requests/s)."""
    return {
        "rps": statistics.median(r.rps for r in results),
        "best": max(r.rps for r in results),
        "p50": statistics.median(r.p50_ms for r in results),
        "p99": statistics.median(r.p99_ms for r in results),
        "per_cpu": statistics.median(r.per_cpu_second for r in results),
    }


def cpu_plan(no_pin: bool) -> tuple[int | None, list[str], str]:
    """The servers' CPU, wrk's command prefix, and a sentence saying what was chosen."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return None, [], f"not pinned (--no-pin); {len(cpus)} CPUs shared by wrk and the server"
    if len(cpus) < 2 or shutil.which("taskset") is None:
        why = "only one CPU" if len(cpus) < 2 else "no taskset"
        return None, [], f"not pinned ({why}); wrk and the server share {len(cpus)} CPU(s)"
    others = ",".join(str(cpu) for cpu in cpus[1:])
    return (
        cpus[0],
        ["taskset", "-c", others],
        f"servers pinned to CPU {cpus[0]}, wrk to CPU {others} (taskset)",
    )


def start_gateway(args: argparse.Namespace, cpu: int | None) -> ServerProcess:
    """A gateway process with this run's cache bound and image size."""
    mode_args = ["--serve-gateway", "--cache-bytes", str(args.cache_mib * 1024 * 1024)]
    mode_args += ["--image-bytes", str(args.image_kib * 1024)]
    if args.access_log:
        mode_args.append("--access-log")
    # With the access log on, its lines go to /dev/null (they are paid for, not shown).
    return ServerProcess("gateway", mode_args, cpu, quiet=args.access_log)


def measure_throughput(args: argparse.Namespace, wrk: Wrk, cpu: int | None) -> None:
    """Cache hits (gateway vs bare, alternating) and 304 revalidations, then the table."""
    image_bytes = args.image_kib * 1024
    servers: list[ServerProcess] = []
    try:
        gateway = start_gateway(args, cpu)
        servers.append(gateway)
        bare = ServerProcess(
            "bare",
            ["--serve-bare", "--image-bytes", str(image_bytes), "--bare-server", args.bare_server],
            cpu,
        )
        servers.append(bare)
        # The same request line as the gateway's: the bare handler ignores the query.
        bare.url += "?" + urlsplit(gateway.url).query

        print("\nChecks")
        etag = check_servers(gateway.url, bare.url, bench_image(image_bytes))

        print(f"\nWarm-up ({args.warmup} s each, not counted)")
        wrk.run("gateway warm-up", gateway, args.warmup)
        wrk.run("bare warm-up", bare, args.warmup)

        print(f"\nCache hits: {args.rounds} rounds, order alternating")
        hits: dict[str, list[WrkResult]] = {"gateway": [], "bare": []}
        for round_number in range(args.rounds):
            order = [gateway, bare] if round_number % 2 == 0 else [bare, gateway]
            for server in order:
                label = f"round {round_number + 1} {server.name}"
                hits[server.name].append(wrk.run(label, server, args.duration))

        print(f"\n304 revalidations (If-None-Match: {etag}): {args.rounds} runs")
        revalidations = [
            wrk.run(f"run {n + 1} gateway 304", gateway, args.duration, [f"If-None-Match: {etag}"])
            for n in range(args.rounds)
        ]
    finally:
        for server in servers:
            server.stop()
    print_summary(args, hits["gateway"], hits["bare"], revalidations)


def print_summary(
    args: argparse.Namespace,
    gateway: list[WrkResult],
    bare: list[WrkResult],
    revalidations: list[WrkResult],
) -> None:
    """The table, the ratio and the verdict."""
    rows = {
        "gateway cache hit (200)": median_result(gateway),
        "bare Tornado handler": median_result(bare),
        "gateway revalidation (304)": median_result(revalidations),
    }
    print(
        f"\nSummary ({args.image_kib} KiB PNG; medians of {args.rounds} runs of {args.duration} s)"
    )
    print(f"  {'':<26} {'req/s':>7} {'best':>7} {'p50 ms':>7} {'p99 ms':>7} {'req/CPU-s':>10}")
    for name, row in rows.items():
        print(
            f"  {name:<26} {row['rps']:>7.0f} {row['best']:>7.0f} {row['p50']:>7.2f}"
            f" {row['p99']:>7.2f} {row['per_cpu']:>10.0f}"
        )
    gw, br = rows["gateway cache hit (200)"], rows["bare Tornado handler"]
    ratio = gw["rps"] / br["rps"]
    paired = [g.rps / b.rps for g, b in zip(gateway, bare, strict=True)]
    print(f"  ratio gateway / bare, req/s medians:     {ratio:.3f}")
    print(
        f"    per round (adjacent runs): {', '.join(f'{r:.3f}' for r in paired)}"
        f";  best runs: {gw['best'] / br['best']:.3f}"
    )
    print(f"  ratio gateway / bare, req/CPU-s medians: {gw['per_cpu'] / br['per_cpu']:.3f}")
    verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
    contended = [r for r in gateway + bare if r.server_cpu_share < CONTENDED_SHARE]
    if contended:
        verdict = f"INCONCLUSIVE ({verdict.lower()} by the numbers, but see below)"
    print(f"  target: gateway >= {TARGET_RATIO} x bare (req/s medians): {verdict}")
    short = contended + [r for r in revalidations if r.server_cpu_share < CONTENDED_SHARE]
    if short:
        print(
            f"  !! in {len(short)} run(s) the server had under {CONTENDED_SHARE:.0%} of its CPU:"
            " other processes competed for it. Its req/s is then not comparable; req/CPU-s is"
            " less affected. Run again on a quiet machine, or with more --rounds."
        )


def measure_memory(args: argparse.Namespace, cpu: int | None) -> None:
    """RSS of a fresh gateway before and after storing FILL_FACTOR times its bound."""
    cache_bytes = args.cache_mib * 1024 * 1024
    print(
        f"\nMemory: a fresh gateway with IMAGE_CACHE_MAX_BYTES={cache_bytes} ({args.cache_mib} MiB)"
    )
    gateway = start_gateway(args, cpu)
    try:
        time.sleep(0.5)  # let start-up settle before the baseline
        before = gateway.rss_kib()
        filled = gateway.command("fill", FILL_TIMEOUT)
        after = gateway.rss_kib()
    finally:
        gateway.stop()
    growth = (after["VmRSS"] - before["VmRSS"]) * 1024
    mib = 1024 * 1024
    print(
        f"  stored {filled['images']} distinct {args.image_kib} KiB images "
        f"({filled['stored_bytes'] / mib:.1f} MiB, {FILL_FACTOR}x the bound) "
        f"in {filled['seconds']:.1f} s; evictions: {filled['evictions']}"
    )
    kept = "still kept (unexpected)" if filled["first_image_kept"] else "evicted, as expected"
    print(f"  the benchmark image, stored first: {kept}")
    print(f"  cache bound (max_bytes):        {filled['max_bytes'] / mib:9.1f} MiB")
    print(
        f"  cache current_bytes:            {filled['current_bytes'] / mib:9.1f} MiB"
        f"  ({filled['items']} images)"
    )
    print(f"  RSS baseline (before filling):  {before['VmRSS'] / 1024:9.1f} MiB")
    print(
        f"  RSS after filling:              {after['VmRSS'] / 1024:9.1f} MiB"
        f"  (peak {after['VmHWM'] / 1024:.1f} MiB)"
    )
    ratio = growth / filled["max_bytes"]
    verdict = "near the bound" if ratio <= MEMORY_TOLERANCE else "NOT near the bound"
    print(
        f"  (RSS after - baseline) / bound: {ratio:9.3f}"
        f"  ({verdict}: this script calls <= {MEMORY_TOLERANCE} near)"
    )


def wrk_version() -> str:
    """wrk's version, e.g. ``wrk debian/4.1.0-3+b2 [epoll]``."""
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (the --serve-* modes are for the server processes this script starts)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement (3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server (2)")
    parser.add_argument(
        "--cache-mib", type=int, default=64, help="IMAGE_CACHE_MAX_BYTES in MiB (64)"
    )
    parser.add_argument("--image-kib", type=int, default=100, help="image size in KiB (100)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="configure the gateway's logging as serve() does (INFO: a line per request, "
        "written to /dev/null); default: no logging configured, like the bare server",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory phase")
    parser.add_argument(
        "--bare-server",
        choices=("plain", "gateway"),
        default="plain",
        help="the bare handler's HTTPServer: Tornado's defaults (plain), or the gateway's "
        "make_http_server with its idle and body timeouts (gateway)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--image-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.duration, args.connections, args.threads, args.rounds, args.warmup) < 1:
        parser.error("--duration, --connections, --threads, --rounds and --warmup must be >= 1")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


def server_loop() -> tuple[str, Any]:
    """The event loop both servers run on: the gateway's, chosen by ``EVENT_LOOP`` as there."""
    chosen = {"EVENT_LOOP": os.environ["EVENT_LOOP"]} if "EVENT_LOOP" in os.environ else {}
    return event_loop_factory(load_settings(chosen).event_loop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, or one of its server processes."""
    args = parse_args(argv)
    if args.serve_gateway:
        pin_to_cpu(args.cpu)
        with asyncio.Runner(loop_factory=server_loop()[1]) as runner:
            runner.run(run_gateway(args.cache_bytes, args.image_bytes, args.access_log))
        return 0
    if args.serve_bare:
        pin_to_cpu(args.cpu)
        # The same event loop as the gateway's (uvloop when installed): only the handler differs.
        with asyncio.Runner(loop_factory=server_loop()[1]) as runner:
            runner.run(run_bare(args.image_bytes, args.bare_server))
        return 0

    if shutil.which("wrk") is None:
        print("bench: wrk is not installed; install it with: apt-get install wrk", file=sys.stderr)
        return 2
    cpu, prefix, pinning = cpu_plan(args.no_pin)
    wrk = Wrk(args.threads, args.connections, prefix)
    print("Image proxy benchmark")
    print(
        f"  Python {platform.python_version()}, Tornado {tornado.version}, {wrk_version()}, "
        f"{os.cpu_count()} CPUs, event loop {server_loop()[0]} (both servers)"
    )
    print(f"  {pinning}; load average before the run: {os.getloadavg()[0]:.2f}")
    print(
        f"  wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency (keep-alive); "
        f"{args.image_kib} KiB RGB-noise PNG"
    )
    logging_note = (
        "access log on (configure_logging as serve(), to /dev/null)"
        if args.access_log
        else "no logging configured"
    )
    print(f"  gateway: make_app + make_http_server, image kept with keep_bytes, {logging_note}")
    server_note = (
        "the gateway's make_http_server"
        if args.bare_server == "gateway"
        else "plain HTTPServer defaults"
    )
    print(f"  bare: RequestHandler.finish(bytes), no per-request ETag, {server_note}")
    started = time.monotonic()
    try:
        measure_throughput(args, wrk, cpu)
        if not args.skip_memory:
            measure_memory(args, cpu)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(f"\nDone in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
