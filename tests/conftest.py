"""Shared fixtures: the gateway under test on a loopback port, and a watch on secrets in logs."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeOrigin, FakeSD, RecordingProxy
from tornado.httpclient import HTTPResponse

from tornado_imagegate.app import make_app
from tornado_imagegate.config import Settings, load_settings
from tornado_imagegate.logsafe import keep_curl_quiet
from tornado_imagegate.server import configure_http_client, make_http_server

CLIENT_KEYS = ("test-client-key-alpha-7c1f", "test-client-key-beta-93ad")
PROXY_SECRET = "test-proxy-secret-5e0b"

# Every secret the suite hands the gateway; none may ever appear in a log line.
SECRETS: set[str] = {*CLIENT_KEYS, PROXY_SECRET}


def register_secret(*values: str) -> None:
    """Add secrets (provider keys, signed links...) that the log watch must never see."""
    SECRETS.update(v for v in values if v)


BETWEEN_TESTS = "(outside any test)"
WAIT_DEADLINE = 10.0
# A markdown image in a chat answer; group 1 is its URL.
LINK = re.compile(r"!\[[^\]]*\]\((\S+?)\)")


class _LogWatch(logging.Handler):
    """Keeps every formatted log line of the whole run, at DEBUG, and which test logged it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        # (index of a line, node id): the test that logged the lines from there on.
        self._starts: list[int] = [0]
        self._tests: list[str] = [BETWEEN_TESTS]
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock, from whichever thread logs.
        self.lines.append(self.format(record))
        waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)

    def begin(self, test: str) -> None:
        """Lines from now on belong to ``test`` (a node id, or BETWEEN_TESTS)."""
        with self.lock:  # type: ignore[union-attr]
            self._starts.append(len(self.lines))
            self._tests.append(test)

    def test_of(self, index: int) -> str:
        """The test that logged line ``index``."""
        return self._tests[bisect.bisect_right(self._starts, index) - 1]

    def start_of(self, test: str) -> int:
        """The index of the first line ``test`` logged (in its latest run), if it ran."""
        if test not in self._tests:
            return len(self.lines)
        position = len(self._tests) - 1 - self._tests[::-1].index(test)
        return self._starts[position]

    def leaks(self, since: int = 0) -> list[str]:
        """Every line from ``since`` on holding a registered secret, named by its test."""
        return [
            f"{self.test_of(index)}: {secret!r} in {line!r}"
            for index, line in enumerate(self.lines[since:], since)
            for secret in SECRETS
            if secret in line
        ]

    async def wait_for(
        self, text: str, since: int, count: int = 1, within: float = WAIT_DEADLINE
    ) -> list[str]:
        """Wait until ``count`` lines from ``since`` on hold ``text``; return those lines.

        For what the gateway does with no event to wait on but a log line.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within):
                while True:
                    with self.lock:  # type: ignore[union-attr]
                        found = [line for line in self.lines[since:] if text in line]
                        if len(found) >= count:
                            return found
                        waiter = loop.create_future()
                        self._waiters.append((loop, waiter))
                    await waiter
        except TimeoutError:
            pytest.fail(f"{count} log line(s) with {text!r} expected within {within} s")


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


LOG_WATCH = _LogWatch()


def pytest_configure(config: pytest.Config) -> None:
    """Run the whole suite with every logger at DEBUG, into the watch."""
    root = logging.getLogger()
    root.addHandler(LOG_WATCH)
    root.setLevel(logging.DEBUG)
    keep_curl_quiet()
    configure_http_client(load_settings({}))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Let a test's own gen_test timeout fire before pytest-timeout's, with its clearer error:
    a test whose gen_test timeout is over half the default gets twice its gen_test timeout."""
    default = float(config.getini("timeout"))
    for item in items:
        gen_test = item.get_closest_marker("gen_test")
        if gen_test is None or item.get_closest_marker("timeout") is not None:
            continue
        own = float(gen_test.kwargs.get("timeout", config.getoption("async_test_timeout")))
        if 2 * own > default:
            item.add_marker(pytest.mark.timeout(2 * own))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Lines logged from here until the test's teardown ends are the test's."""
    LOG_WATCH.begin(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test's teardown: fail the test if a line it logged holds a secret."""
    yield
    leaks = LOG_WATCH.leaks(since=LOG_WATCH.start_of(item.nodeid))
    LOG_WATCH.begin(BETWEEN_TESTS)
    if leaks:
        pytest.fail(f"secrets in log lines this test wrote: {leaks[:5]}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log():
    """After the last test: no secret handed to the gateway appears in any log line, including
    a secret registered by a later test than the one that logged it."""
    yield
    leaks = LOG_WATCH.leaks()
    assert not leaks, f"secrets in the log, each line named by the test that wrote it: {leaks[:5]}"


class Calls:
    """Counts the calls of one method of a live object, so that a test can wait for them.

    For servers and services with no event of their own: the method runs as before.
    """

    def __init__(self, target: Any, name: str) -> None:
        self.count = 0
        self._changed = asyncio.Event()
        original = getattr(target, name)

        def observed(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self.count += 1
            self._changed.set()
            return result

        setattr(target, name, observed)

    async def reach(self, count: int = 1, within: float = WAIT_DEADLINE) -> None:
        """Wait until the method has been called ``count`` times in all."""
        try:
            async with asyncio.timeout(within):
                while self.count < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"{count} call(s) expected within {within} s, saw {self.count}")


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket where systemd would listen for a service's notifications."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(30.0)
    yield sock, path
    sock.close()


@pytest.fixture
def sd(io_loop):
    """A fake SD/Z-Image provider (real request and answer shapes) and the host of its images."""
    images = FakeOrigin()
    fake = FakeSD(images)
    yield fake
    fake.close()
    images.close()


@pytest.fixture
def proxy(io_loop):
    """A recording proxy on 127.0.0.1 that forwards what it is asked to."""
    server = RecordingProxy()
    yield server
    server.close()


def gateway_settings(env: dict[str, str] | None = None) -> Settings:
    """Settings for tests: two client keys and the given variables."""
    base = {"AUTHORIZED_API_KEY": ",".join(CLIENT_KEYS), "IMAGE_PROXY_SECRET": PROXY_SECRET}
    base.update(env or {})
    return load_settings(base)


@pytest.fixture
def gateway_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Extra configuration for the gateway under test; set it with ``@with_env({...})``."""
    return getattr(request, "param", {})


def with_env(env: dict[str, str]) -> pytest.MarkDecorator:
    """Run a test against a gateway configured with these extra variables."""
    return pytest.mark.parametrize("gateway_env", [env], indirect=True, ids=["env"])


@pytest.fixture
def app(gateway_env: dict[str, str]):
    """The gateway application under test."""
    return make_app(gateway_settings(gateway_env))


@pytest.fixture
def http_server(io_loop, _unused_port, app):
    """The gateway's own HTTP server (with its inbound limits) on a loopback port."""
    server = make_http_server(app)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


@pytest.fixture
def base_url(http_port, http_server) -> str:
    """The gateway's address: IPv4 loopback, as the server is bound there."""
    return f"http://127.0.0.1:{http_port}"


def auth(key: str = CLIENT_KEYS[0]) -> dict[str, str]:
    """The Authorization header for a client key."""
    return {"Authorization": f"Bearer {key}"}


async def call(
    http_client: Any,
    base_url: str,
    path: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    key: str | None = CLIENT_KEYS[0],
) -> HTTPResponse:
    """Send one request to the gateway; never raises on an error status."""
    all_headers = dict(auth(key)) if key else {}
    all_headers.update(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        all_headers.setdefault("Content-Type", "application/json")
    return await http_client.fetch(
        base_url + path,
        method=method,
        body=body,
        headers=all_headers,
        raise_error=False,
        allow_nonstandard_methods=True,
        follow_redirects=False,
    )


async def post_chat(http_client: Any, base_url: str, body: Any, **kwargs: Any) -> HTTPResponse:
    """POST a chat completion (with the first client key unless told otherwise)."""
    return await call(
        http_client, base_url, "/v1/chat/completions", method="POST", body=body, **kwargs
    )


def json_of(response: HTTPResponse) -> Any:
    """The decoded JSON body of a response."""
    return json.loads(response.body)


def assert_error(response: HTTPResponse, status: int, code: str) -> dict[str, Any]:
    """The answer is the OpenAI error envelope with this status and code, and all four keys."""
    assert response.code == status, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    error = json_of(response)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert b"Traceback" not in response.body
    return error


def chat_body(content: Any = "a cat on a roof", model: str = "imagegate-demo", **extra: Any):
    """A chat completions body with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
