"""Benchmark the gateway with 1 and 2 worker processes (``IMAGEGATE_WORKERS``), in one run.

For each worker count, against the same fakes (bench_generation.py's fakes process: an instant
SiliconFlow-shaped provider and its image host), it measures with wrk (keep-alive):

* cache hits: ``GET /image-proxy?...`` of one image the gateway keeps in memory (each worker
  keeps its own copy after its first answer);
* chat completions: ``POST /v1/chat/completions`` (model ``flux-fast``, ``"enhance": false``):
  one provider call and one image fetch each.

It prints, for each: requests per second (throughput), the gateway's CPU seconds during the run
(the supervisor and every worker, from ``/proc``) and requests per CPU-second, and the share of
the machine's CPUs the gateway used. The load generator and the fakes run on the same machine:
on a small one they take CPU the workers would use, and the table says how much the gateway got.

Run it from the repository root with the project installed; it needs wrk::

    python bench/bench_workers.py                  # about 50 seconds
    python bench/bench_workers.py --duration 5 --connections 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import bench_generation as generation

WORKER_COUNTS = (1, 2)
COMPLETION_BODY = {
    "model": generation.FAST_MODEL,
    "messages": [{"role": "user", "content": generation.PROMPT}],
    "enhance": False,
}


@dataclass
class Run:
    """One wrk run against one gateway."""

    workers: int
    what: str
    requests: int
    seconds: float
    cpu_seconds: float
    failures: int

    @property
    def per_second(self) -> float:
        """Throughput."""
        return self.requests / self.seconds

    @property
    def per_cpu_second(self) -> float:
        """Requests per second of the gateway's CPU time."""
        return self.requests / self.cpu_seconds if self.cpu_seconds else float("nan")

    @property
    def cpu_share(self) -> float:
        """CPUs the gateway used on average during the run."""
        return self.cpu_seconds / self.seconds


def gateway_cpu_seconds(pid: int) -> float:
    """CPU time of the gateway: the process and its children (the workers) so far."""
    total = generation.proc_cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as children:
                for child in children.read().split():
                    with contextlib.suppress(OSError):
                        total += generation.proc_cpu_seconds(int(child))
    return total


def wrk(url: str, args: argparse.Namespace, script: str | None = None) -> tuple[int, float, int]:
    """Run wrk; return the requests it completed, its seconds and its failed requests."""
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s"]
    if script:
        command += ["-s", script]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=args.duration + 60
    ).stdout
    done = re.search(r"(\d+) requests in ([0-9.]+)(m?s)", output)
    if done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    seconds = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    failures = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?timeout (\d+)"):
        found = re.search(pattern, output)
        failures += int(found.group(1)) if found else 0
    return int(done.group(1)), seconds, failures


def completion_script(directory: str) -> str:
    """A wrk script POSTing one chat completion per request."""
    return generation.wrk_post_script(directory, "completion", COMPLETION_BODY, generation.API_KEY)


def kept_image_path(origin: str) -> str:
    """Generate one image; the path and query of its link (the gateway keeps the image)."""
    request = urllib.request.Request(
        origin + "/v1/chat/completions",
        data=json.dumps(COMPLETION_BODY).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {generation.API_KEY}",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        content = json.load(answer)["choices"][0]["message"]["content"]
    match = generation.MARKDOWN_IMAGE.search(content)
    if match is None:
        raise RuntimeError(f"no image link in {content!r}")
    parts = urlsplit(match.group(1))
    return f"{parts.path}?{parts.query}"


def measure(workers: int, fakes: generation.Child, args: argparse.Namespace, tmp: str) -> list[Run]:
    """Start a gateway with ``workers`` workers; measure cache hits, then completions."""
    env = generation.gateway_env(fakes, "WARNING", None)
    env["IMAGEGATE_WORKERS"] = str(workers)
    gateway = generation.start_gateway(f"gateway-{workers}", env, tmp)
    runs = []
    try:
        origin = gateway.url
        link = kept_image_path(origin)
        targets = (
            ("cache hits", origin + link, None),
            ("completions", origin + "/v1/chat/completions", completion_script(tmp)),
        )
        for what, url, script in targets:
            wrk(url, argparse.Namespace(**{**vars(args), "duration": args.warmup}), script)
            before = gateway_cpu_seconds(gateway.proc.pid)
            requests, seconds, failures = wrk(url, args, script)
            cpu = gateway_cpu_seconds(gateway.proc.pid) - before
            runs.append(Run(workers, what, requests, seconds, cpu, failures))
            print(
                f"  {workers} worker(s), {what}: {requests / seconds:,.0f} req/s, "
                f"{cpu:.1f} CPU-s, {failures} failed",
                flush=True,
            )
    finally:
        generation.finish_child(gateway)
    return runs


def print_table(runs: Sequence[Run]) -> None:
    """The figures side by side, and the ratio of 2 workers to 1."""
    print()
    header = ("workers", "what", "req/s", "req/CPU-s", "CPUs used", "failed")
    print("{:>7}  {:<12} {:>9} {:>10} {:>9} {:>6}".format(*header))
    for run in runs:
        print(
            f"{run.workers:>7}  {run.what:<12} {run.per_second:>9,.0f} "
            f"{run.per_cpu_second:>10,.0f} {run.cpu_share:>9.2f} {run.failures:>6}"
        )
    by = {(run.workers, run.what): run for run in runs}
    for what in ("cache hits", "completions"):
        one, two = by.get((1, what)), by.get((2, what))
        if one and two:
            print(
                f"2 workers / 1, {what}: throughput x{two.per_second / one.per_second:.2f}, "
                f"requests per CPU-second x{two.per_cpu_second / one.per_cpu_second:.2f}"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run (2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every run measured without failures."""
    args = parse_args(argv)
    if not generation.shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    print(
        f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), load average "
        f"{os.getloadavg()[0]:.2f}; wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s; the fakes and wrk share the machine with the gateway",
        flush=True,
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        fakes = generation.start_fakes(2.0, tmp)
        try:
            for workers in WORKER_COUNTS:
                runs += measure(workers, fakes, args, tmp)
                time.sleep(0.5)
        finally:
            generation.finish_child(fakes)
    print_table(runs)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0 if all(run.failures == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
