"""State shared by several instances through Redis (``REDIS_URL``): the link and key health.

``RedisLink`` is the one connection to Redis. Every call goes through ``RedisLink.call``: a
failure (refused, reset, timed out) marks Redis unreachable, is logged once per interval rather
than per request, and raises ``SharedUnavailable``, which callers answer by serving from their
own tiers. While Redis is unreachable no call is attempted (they fail at once); a probe every
``PROBE_SECONDS`` notices its return without a restart and runs the periodic jobs (key health).

``KeyHealthBoard`` shares the rests of provider and optimiser keys: a rest decided by one
instance is written to Redis under a fingerprint of the key (an HMAC under the link-signing
secret, never the key), and every instance reads the rests of its own keys at each probe, so a
rest reaches the others within ``PROBE_SECONDS``. Transient failures are counted in Redis too,
so the failure window of ``KEY_ALLOWED_FAILS`` is one for all instances.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

if TYPE_CHECKING:
    from tornado_imagegate.keys import KeyPool

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "imagegate:"
PROBE_SECONDS = 1.0
# How often a continuing outage is logged again.
OUTAGE_LOG_SECONDS = 60.0
# A call to Redis that takes longer than this counts as an outage (Redis answers in microseconds).
CALL_TIMEOUT_SECONDS = 2.0
UNREACHABLE = "the shared store (Redis) is unreachable"


class SharedUnavailable(Exception):
    """Redis cannot be used now: serve from this instance's own state."""


class RedisLink:
    """The connection to Redis, whether it is reachable, and the periodic probe."""

    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        # No retries inside the client: a failed call is reported at once and the probe
        # reconnects; requests never wait on a backoff.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=CALL_TIMEOUT_SECONDS,
            socket_connect_timeout=CALL_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        self.reachable = True
        self.jobs: list[Callable[[], Awaitable[None]]] = []
        self._last_outage_log = -OUTAGE_LOG_SECONDS
        self._probe: asyncio.Task | None = None

    def key(self, *parts: str) -> str:
        """A Redis key of the gateway's: the prefix, then the parts joined by colons."""
        return self.prefix + ":".join(parts)

    def start(self) -> None:
        """Start the probe, if it is not running (needs a running event loop)."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._run_probe())

    async def aclose(self) -> None:
        """Stop the probe and close the connections."""
        if self._probe is not None:
            self._probe.cancel()
            try:
                await self._probe
            except asyncio.CancelledError:
                pass
        await self.client.aclose()

    async def call(self, operation: Callable[[redis.Redis], Awaitable[T]]) -> T:
        """Run ``operation`` on the client; raise SharedUnavailable if Redis cannot answer."""
        if not self.reachable:
            raise SharedUnavailable(UNREACHABLE)
        return await self._attempt(operation)

    async def _attempt(self, operation: Callable[[redis.Redis], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
                return await operation(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            raise SharedUnavailable(UNREACHABLE) from None

    def _lost(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.reachable or now - self._last_outage_log >= OUTAGE_LOG_SECONDS:
            self._last_outage_log = now
            logger.warning(
                "%s (%s); serving from this instance's own state until it is back",
                UNREACHABLE,
                type(exc).__name__,
            )
        self.reachable = False

    async def probe(self) -> None:
        """Ping Redis once: an outage begins or ends here; then run the periodic jobs."""
        try:
            await self._attempt(lambda client: client.ping())
        except SharedUnavailable:
            return
        if not self.reachable:
            self.reachable = True
            logger.warning("the shared store (Redis) is reachable again")
        for job in self.jobs:
            try:
                await job()
            except SharedUnavailable:
                return

    async def _run_probe(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_SECONDS)


def key_fingerprint(secret: bytes, key: str) -> str:
    """What Redis holds instead of a provider key: 128 bits of an HMAC under the link secret."""
    return hmac.digest(secret, b"imagegate-key-health\n" + key.encode(), "sha256").hex()[:32]


class KeyHealthBoard:
    """Shares key rests and transient-failure counts between instances through Redis."""

    def __init__(self, link: RedisLink, secret: bytes) -> None:
        self.link = link
        self.secret = secret
        self._watched: list[tuple[KeyPool, list[str]]] = []
        self._tasks: set[asyncio.Task] = set()
        link.jobs.append(self.refresh)

    def watch(self, pool: KeyPool) -> None:
        """Share the health of this pool's keys from now on."""
        fingerprints = [key_fingerprint(self.secret, key) for key in pool.keys]
        self._watched.append((pool, fingerprints))
        pool.health = self

    def _fingerprint(self, pool: KeyPool, index: int) -> str:
        return key_fingerprint(self.secret, pool.keys[index])

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def quietly() -> None:
            try:
                await work
            except SharedUnavailable:
                pass  # logged by the link; the local decision stands

        task = asyncio.ensure_future(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def rested(self, pool: KeyPool, index: int, seconds: float) -> None:
        """A key rests here: write the rest for the others (a longer rest is never shortened)."""
        name = self.link.key("rest", self._fingerprint(pool, index))
        milliseconds = max(1, int(seconds * 1000))
        self._spawn(self.link.call(lambda client: _extend(client, name, milliseconds)))

    def recovered(self, pool: KeyPool, index: int) -> None:
        """A resting key worked again: its shared rest ends."""
        name = self.link.key("rest", self._fingerprint(pool, index))
        self._spawn(self.link.call(lambda client: client.delete(name)))

    def failed(self, pool: KeyPool, index: int) -> None:
        """A transient failure: count it for every instance; enough of them rest the key."""
        name = self.link.key("fails", self._fingerprint(pool, index))
        window_ms = int(pool.policy.window * 1000)

        async def count(client: redis.Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.pexpire(name, window_ms, nx=True)
                failures, _ = await pipe.execute()
            if failures >= pool.policy.allowed_fails:
                await client.delete(name)
                pool.rest_after_shared_failures(index)

        self._spawn(self.link.call(count))

    async def refresh(self) -> None:
        """Apply the rests other instances wrote for this instance's keys."""
        names = [
            self.link.key("rest", fingerprint)
            for _, fingerprints in self._watched
            for fingerprint in fingerprints
        ]
        if not names:
            return

        async def read(client: redis.Redis) -> list[int]:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.pttl(name)
                return await pipe.execute()

        remaining = iter(await self.link.call(read))
        for pool, fingerprints in self._watched:
            for index in range(len(fingerprints)):
                milliseconds = next(remaining)
                if milliseconds > 0:
                    pool.apply_shared_rest(index, milliseconds / 1000)


_EXTEND = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return left
"""


async def _extend(client: redis.Redis, name: str, milliseconds: int) -> Any:
    return await client.eval(_EXTEND, 1, name, milliseconds)
