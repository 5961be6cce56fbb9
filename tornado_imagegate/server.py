"""Start-up: flags and configuration, logging, the HTTP client configured once, listen, signals."""

from __future__ import annotations

# First: a library that cannot be loaded (pycurl without libcurl) is named with what to install,
# in one line instead of a traceback.
import tornado_imagegate.dependencies  # noqa: F401

# isort: split
import argparse
import asyncio
import dataclasses
import errno
import gc
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

import pycurl
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application

from tornado_imagegate import __version__, workers
from tornado_imagegate.app import GatewayApplication, make_app
from tornado_imagegate.config import ConfigError, Settings, load_settings
from tornado_imagegate.curl_client import GatewayCurlClient
from tornado_imagegate.datadir import (
    CLIENT_KEY_FILE,
    LINK_SECRET_FILE,
    DataDirError,
    kept_secret,
    new_client_key,
    new_link_secret,
    prepare,
)
from tornado_imagegate.lifecycle import Lifecycle
from tornado_imagegate.listener import (
    GatewayHTTPServer,
    connection_cap,
    current_descriptor_limit,
    raise_descriptor_limit,
)
from tornado_imagegate.logsafe import configure_logging, hide_secrets
from tornado_imagegate.options import OPTIONS, variables_help
from tornado_imagegate.providers import decode
from tornado_imagegate.report import problems_report, settings_report
from tornado_imagegate.sdnotify import Notifier
from tornado_imagegate.sources import read_credentials, read_env_file

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
# Streaming handlers enforce the real request limit with a 413; this only caps chunked bodies.
SERVER_MAX_BODY_BYTES = 64 * 1024 * 1024
# Silent connections must not pile up (each holds a descriptor). Tornado counts this from the
# moment it waits for a request's headers, keep-alive idle time included: real clients send their
# headers within milliseconds, and SDKs drop pooled connections after about 5 s (httpx, undici).
# A reverse proxy in front must keep its upstream keep-alive timeout below this one.
IDLE_CONNECTION_TIMEOUT = 20.0
# The whole body must arrive within this: a few KB in one packet for most requests, and the
# largest allowed (4 MiB) at about 1.1 Mbit/s. A slow body holds a connection that, unlike an
# idle one, is not closed to make room at the connection cap.
BODY_TIMEOUT = 30.0
MAX_HEADER_BYTES = 64 * 1024
MAX_UPSTREAM_BODY_BYTES = 64 * 1024 * 1024
GC_YOUNG_THRESHOLD = 10_000
LISTEN_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
FLAG_OPTIONS = tuple(option for option in OPTIONS if option.flag)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; each flag can also come from its environment variable."""
    parser = argparse.ArgumentParser(
        prog="imagegate",
        description="OpenAI-compatible image-generation gateway. With no configuration it runs\n"
        "the built-in offline demo provider on 127.0.0.1:8080.",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in FLAG_OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.flag.lstrip("-").upper(),
            help=f"{option.help} ({option.name}, default {option.show(option.default)})",
        )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="read KEY=VALUE lines (systemd EnvironmentFile syntax); real environment wins",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print a report (no secrets), exit 0 if valid, 2 if not",
    )
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge the env file, systemd credentials, the environment and the flags, then validate.

    With ``--check-config`` a variable that looks like the gateway's but is not one is a problem;
    otherwise it is a warning, logged at start-up.
    """
    merged: dict[str, str] = {}
    if args.env_file:
        merged.update(read_env_file(args.env_file))
    merged.update(read_credentials(environ.get("CREDENTIALS_DIRECTORY", "")))
    merged.update(environ)
    flags = {
        option.name: getattr(args, option.name)
        for option in FLAG_OPTIONS
        if getattr(args, option.name) is not None
    }
    return load_settings(merged, flags=flags, strict=args.check_config)


def with_kept_state(settings: Settings) -> Settings:
    """The settings with what was not configured taken from the data directory, made there once:
    the client key (without ``AUTHORIZED_API_KEY``) and the link secret (without
    ``IMAGE_PROXY_SECRET``).

    Without a data directory the client key is made for this run only, and the link secret is
    derived from the configured keys (``images.links.derive_secret``); links signed with that
    derived secret, before a data directory kept one, still verify. Raises DataDirError.
    """
    directory = settings.data_dir
    kept: dict[str, object] = {}
    if directory:
        prepare(directory)
        if not settings.image_proxy_secret:
            secret = kept_secret(directory, LINK_SECRET_FILE, new_link_secret)
            kept.update(image_proxy_secret=secret, image_proxy_secret_kept=True)
    if not settings.client_keys:
        if directory:
            key = kept_secret(directory, CLIENT_KEY_FILE, new_client_key)
        else:
            key = new_client_key()
        kept.update(client_keys=(key,), client_keys_generated=True)
    return dataclasses.replace(settings, **kept)


def welcome_text(settings: Settings, port: int) -> str:
    """What is printed once on start-up: where to go, and the generated key if there is one."""
    host = settings.host
    shown_host = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (naming the wildcard, not binding it)
        shown_host = "127.0.0.1"
    origin = settings.public_base_url or f"http://{shown_host}:{port}"
    lines = [
        f"tornado-imagegate {__version__} is listening on {host}:{port}",
        f"  welcome page and playground: {origin}/",
        f"  base URL for OpenAI clients: {origin}/v1",
        f"  models: {', '.join(settings.model_ids)}",
    ]
    if settings.client_keys_generated and settings.data_dir:
        kept = os.path.join(settings.data_dir, CLIENT_KEY_FILE)
        lines += [
            "  No AUTHORIZED_API_KEY is set, so the gateway listens on loopback only, with this",
            f"  key, kept in {kept} and used at every start:",
            f"    {settings.client_keys[0]}",
        ]
    elif settings.client_keys_generated:
        lines += [
            "  No AUTHORIZED_API_KEY is set, so this key was generated for this run only",
            "  (the gateway listens on loopback only without a configured key):",
            f"    {settings.client_keys[0]}",
        ]
    return "\n".join(lines)


def configure_http_client(settings: Settings) -> None:
    """Configure the one curl client for every upstream call, once, before any is made."""
    AsyncHTTPClient.configure(
        GatewayCurlClient,
        max_clients=settings.upstream_max_clients,
        max_body_size=MAX_UPSTREAM_BODY_BYTES,
    )
    logger.debug(
        "upstream client: curl, up to %d transfers at once; %s",
        settings.upstream_max_clients,
        pycurl.version,
    )


def event_loop_factory(
    wanted: str = "uvloop",
) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop to run on (``EVENT_LOOP``): uvloop by default, asyncio's own on request
    or when uvloop is not installed. Returns its name and a factory (None: asyncio's default).

    uvloop runs Tornado and the curl client unchanged, with less work per loop turn: about
    0.2-0.3 ms less gateway CPU per chat completion (bench/bench_generation.py).
    """
    if wanted == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        return "asyncio (uvloop is not installed)", None
    return f"uvloop {uvloop.__version__}", uvloop.new_event_loop


def make_http_server(
    app: Application,
    *,
    max_connections: int | None = None,
    idle_timeout: float = IDLE_CONNECTION_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
) -> GatewayHTTPServer:
    """The HTTP server with inbound limits: body and header size, idle and body timeouts, and a
    cap on open client connections (by default ``MAX_CLIENT_CONNECTIONS`` or sized from the
    descriptor limit)."""
    if max_connections is None:
        settings = app.services.settings if isinstance(app, GatewayApplication) else Settings()
        max_connections = connection_cap(
            settings.max_client_connections,
            settings.upstream_max_clients,
            workers=settings.workers,
        )
    return GatewayHTTPServer(
        app,
        max_connections=max_connections,
        max_body_size=SERVER_MAX_BODY_BYTES,
        idle_connection_timeout=idle_timeout,
        body_timeout=body_timeout,
        max_header_size=MAX_HEADER_BYTES,
    )


def settle_garbage_collector() -> None:
    """Freeze what start-up built and collect young objects less often.

    Each request makes thousands of short-lived objects. With Python's default threshold (700
    allocations) a burst of a thousand requests ran about 400 collections, three of them over
    the whole heap: 0.3 s of a 2.4 s burst (bench/bench_generation.py). Frozen start-up objects
    are never walked again, and the larger young generation cut that to about 0.1 s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def listening_sockets(settings: Settings) -> list[socket.socket]:
    """The sockets the gateway listens on (``IMAGEGATE_HOST``, ``IMAGEGATE_PORT``)."""
    # A burst of clients must not overflow Tornado's default listen queue of 128.
    return bind_sockets(settings.port, settings.host, backlog=socket.SOMAXCONN)


async def serve(
    settings: Settings,
    notifier: Notifier | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Listen, tell systemd, run until SIGTERM or SIGINT, then shut down gracefully.

    A worker of several is given its supervisor's ``sockets`` and a notifier that reports to
    the supervisor, which prints the welcome once for all.
    """
    notifier = notifier or Notifier()
    # Before anything can announce that the gateway listens: a SIGTERM sent by whoever heard
    # it must always find the graceful shutdown in place.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    configure_http_client(settings)
    app = make_app(settings)
    server = make_http_server(app)
    settle_garbage_collector()
    welcome = sockets is None
    sockets = listening_sockets(settings) if sockets is None else sockets
    server.add_sockets(sockets)
    logger.info(
        "accepting up to %d client connections (descriptor limit %d)",
        server.max_connections,
        current_descriptor_limit(),
    )
    port = sockets[0].getsockname()[1]
    if welcome:
        print(welcome_text(settings, port), flush=True)
    notifier.ready(f"listening on {settings.host}:{port}")
    watchdog = None
    if notifier.watchdog_seconds:
        # Sent from the event loop itself: a wedged loop stops it, and systemd restarts us.
        watchdog = PeriodicCallback(notifier.watchdog, notifier.watchdog_seconds * 1000 / 2)
        watchdog.start()

    await stop.wait()
    await shut_down(server, app.services.lifecycle, settings.shutdown_grace_seconds, notifier)
    if watchdog is not None:
        watchdog.stop()


async def shut_down(
    server: HTTPServer, lifecycle: Lifecycle, grace: float, notifier: Notifier
) -> None:
    """Stop accepting, let requests in flight (open streams too) finish, then close the rest."""
    lifecycle.shutting_down = True
    server.stop()  # first: whoever hears STOPPING=1 must find the port already closed
    notifier.stopping()
    logger.info(
        "shutting down: %d request(s) in flight, waiting up to %gs", lifecycle.inflight, grace
    )
    if not await lifecycle.drain(grace):
        logger.warning(
            "grace period over: closing %d request(s) still in flight", lifecycle.inflight
        )
    try:
        await asyncio.wait_for(server.close_all_connections(), 5)
    except TimeoutError:
        logger.warning("some connections did not close in time")
    decode.shutdown()  # the worker process that reads large provider answers, if started
    logger.info("stopped")


def print_report(text: str) -> int:
    """Print the ``--check-config`` report; a reader that stops early (``| head``) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point standard output at /dev/null, so that closing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``imagegate`` command."""
    args = parse_args(argv)
    try:
        settings = build_settings(args, os.environ)
    except ConfigError as exc:
        print(problems_report(exc.problems, exc.groups, exc.warnings), file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        return print_report(settings_report(settings))
    configure_logging(settings.log_level)
    for warning in settings.warnings:
        logger.warning("configuration: %s", warning)
    raise_descriptor_limit()
    try:
        settings = with_kept_state(settings)
    except DataDirError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    hide_secrets(settings.secrets())
    loop_name, loop_factory = event_loop_factory(settings.event_loop)
    logger.info("event loop: %s", loop_name)
    try:
        if settings.workers > 1:
            return run_workers(settings, loop_factory)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings))
    except (socket.gaierror, OSError) as exc:
        if isinstance(exc, socket.gaierror) or exc.errno in LISTEN_ERRNOS:
            print(listen_problem(settings, exc), file=sys.stderr)
            return 1
        raise
    return 0


def listen_problem(settings: Settings, exc: OSError) -> str:
    """One line for a port or address the gateway cannot listen on, naming the flag to change."""
    where = f"imagegate: cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        example = f", e.g. --port {settings.port + 1}" if settings.port < 65535 else ""
        return (
            f"{where}: another program uses this port;"
            f" choose another with --port (IMAGEGATE_PORT){example}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{where}: this user may not listen on port {settings.port};"
            " choose a port above 1023 with --port (IMAGEGATE_PORT)"
        )
    return f"{where}: choose an address of this machine with --host (IMAGEGATE_HOST)"


def with_one_link_secret(settings: Settings) -> Settings:
    """With no proxy secret configured nor any key to derive one from, make one for every
    worker: each would otherwise pick its own, and refuse the others' links."""
    if settings.image_proxy_secret or settings.secret_material():
        return settings
    return dataclasses.replace(settings, image_proxy_secret=secrets.token_urlsafe(32))


def run_workers(
    settings: Settings, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> int:
    """``IMAGEGATE_WORKERS`` processes serving one port, under a supervisor (workers.py).

    The sockets are bound and the secrets settled here, before any event loop or HTTP client
    exists, so that every worker forked from this process shares them.
    """
    settings = with_one_link_secret(settings)
    hide_secrets(settings.secrets())
    sockets = listening_sockets(settings)
    port = sockets[0].getsockname()[1]

    def run_worker(notifier: workers.WorkerNotifier) -> int:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings, notifier, sockets))
        return 0

    def announce() -> None:
        print(welcome_text(settings, port), flush=True)

    return workers.supervise(
        settings.workers, sockets, run_worker, announce, settings.shutdown_grace_seconds
    )
