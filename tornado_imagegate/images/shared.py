"""The shared tier: images in Redis, served by every instance, and fetches made once for all.

Unlike the tiers of ``cache.py`` this one is asynchronous: the store asks it only after a local
miss, so a memory hit stays synchronous. In Redis (keys under ``imagegate:``):

* ``image:<key>``: a hash of the bytes (``data``) and what is served with them (``type``,
  ``etag``, ``modified``), expiring ``REDIS_IMAGE_TTL_SECONDS`` after it was last stored or
  served. An upstream image is stored under ``url_key(url)``, so an image there IS a signed link
  already fetched: no instance fetches it again.
* ``fetching:<key>``: the single-flight lock of a missing image, ``SET NX PX`` with a random
  token; its holder fetches and stores, the others wait for the image. It expires with the
  fetch's deadline, so a holder that dies lets another take over.
* ``failed:<key>``: the error of a fetch that just failed, for a few seconds, so that the
  instances waiting for it answer it rather than all fetching again.

Every method raises ``SharedUnavailable`` when Redis cannot answer, except ``put``, which only
reports whether the image was stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable

import redis.asyncio as redis

from tornado_imagegate.errors import GatewayError
from tornado_imagegate.images.cache import CachedImage
from tornado_imagegate.redis_link import RedisLink, SharedUnavailable

logger = logging.getLogger(__name__)

# How long the error of a failed fetch is shared with the instances that waited for it.
FAILURE_MEMORY_MS = 10_000
# Waiting for another instance's fetch: the first look after this, then twice as long, up to
# the longest pause.
FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.2

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SharedTier:
    """Images in Redis, with a lock per missing image so that one instance fetches it."""

    name = "redis"

    def __init__(self, link: RedisLink, ttl_seconds: float) -> None:
        self.link = link
        self.ttl_ms = max(1, int(ttl_seconds * 1000))

    def _image(self, key: str) -> str:
        return self.link.key("image", key)

    async def get(self, key: str) -> CachedImage | None:
        """The image stored under ``key`` (its expiry starts again), or None."""
        name = self._image(key)

        async def read(client: redis.Redis) -> dict[bytes, bytes]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(name)
                pipe.pexpire(name, self.ttl_ms)
                fields, _ = await pipe.execute()
            return fields

        return _decode(key, await self.link.call(read))

    async def put(self, key: str, image: CachedImage) -> bool:
        """Store an image for every instance; False when Redis could not take it."""
        name = self._image(key)
        fields = {
            "data": image.data,
            "type": image.content_type,
            "etag": image.etag,
            "modified": repr(image.last_modified),
        }

        async def write(client: redis.Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping=fields)
                pipe.pexpire(name, self.ttl_ms)
                await pipe.execute()

        try:
            await self.link.call(write)
        except SharedUnavailable:
            return False
        return True

    async def contains(self, key: str) -> bool:
        """Whether Redis holds the image, without reading it."""
        return bool(await self.link.call(lambda client: client.exists(self._image(key))))

    async def lock(self, key: str, seconds: float) -> str | None:
        """Take the fetch lock of ``key`` for ``seconds``: its token, or None if another has it."""
        token = secrets.token_hex(16)
        name = self.link.key("fetching", key)
        milliseconds = max(1, int(seconds * 1000))
        taken = await self.link.call(
            lambda client: client.set(name, token, nx=True, px=milliseconds)
        )
        return token if taken else None

    async def unlock(self, key: str, token: str, failure: GatewayError | None = None) -> None:
        """Give the lock back (only if still ours), first saying why the fetch failed, if it did."""
        lock = self.link.key("fetching", key)

        async def release(client: redis.Redis) -> None:
            if failure is not None:
                said = {
                    "status": failure.status,
                    "code": failure.code,
                    "message": failure.message,
                    "headers": failure.headers,
                }
                await client.set(
                    self.link.key("failed", key), json.dumps(said), px=FAILURE_MEMORY_MS
                )
            await client.eval(_RELEASE, 1, lock, token)

        try:
            await self.link.call(release)
        except SharedUnavailable:
            pass  # the lock expires by itself

    async def wait_for(self, key: str, deadline: float) -> CachedImage | None:
        """Wait while another instance fetches ``key``: its image, or None once nobody holds
        the lock (its holder died: take it over) or the loop time ``deadline`` passed.

        Raises the holder's error when its fetch failed.
        """
        loop = asyncio.get_running_loop()
        image_name = self._image(key)
        lock_name = self.link.key("fetching", key)
        failure_name = self.link.key("failed", key)
        pause = FIRST_PAUSE

        async def look(client: redis.Redis) -> list:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(image_name)
                pipe.exists(lock_name)
                pipe.get(failure_name)
                return await pipe.execute()

        while True:
            fields, locked, failure = await self.link.call(look)
            image = _decode(key, fields)
            if image is not None:
                return image
            if failure is not None:
                said = json.loads(failure)
                raise GatewayError(
                    said["status"], said["code"], said["message"], headers=said["headers"]
                )
            if not locked or loop.time() >= deadline:
                return None
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, LONGEST_PAUSE)


def _decode(key: str, fields: dict[bytes, bytes]) -> CachedImage | None:
    if not fields:
        return None
    try:
        return CachedImage(
            fields[b"data"],
            fields[b"type"].decode("ascii"),
            fields[b"etag"].decode("ascii"),
            float(fields[b"modified"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        logger.warning("shared image %s unusable; treated as a miss", key[:8])
        return None


class SharedLookup:
    """An image being looked up in the shared tier, and perhaps fetched: an ``Arrival``.

    ``found`` resolves with the complete image (from Redis) or with the local transfer that
    fetches it; until then nothing is known, not even the type.
    """

    def __init__(self, found: Awaitable[CachedImage | object]) -> None:
        loop = asyncio.get_running_loop()
        self.content_type: str | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[CachedImage] = loop.create_future()
        for future in (self.ready, self.done):
            future.add_done_callback(_mark_retrieved)
        self._source = None
        self.task = asyncio.ensure_future(self._follow(found))

    async def _follow(self, found: Awaitable[CachedImage | object]) -> None:
        try:
            result = await found
            if isinstance(result, CachedImage):
                self.content_type = result.content_type
                self.ready.set_result(None)
                self.done.set_result(result)
                return
            self._source = result
            await result.ready  # type: ignore[attr-defined]
            self.content_type = result.content_type  # type: ignore[attr-defined]
            self.ready.set_result(None)
            self.done.set_result(await result.done)  # type: ignore[attr-defined]
        except GatewayError as exc:
            for future in (self.ready, self.done):
                if not future.done():
                    future.set_exception(exc)
        except Exception:
            logger.exception("shared image lookup crashed")
            error = GatewayError(500, "server_error", "Unhandled error.")
            for future in (self.ready, self.done):
                if not future.done():
                    future.set_exception(error)

    async def stream(self) -> AsyncIterator[bytes]:
        """The image's bytes: at once when complete, else as the local fetch receives them."""
        await self.ready
        if self._source is not None:
            async for chunk in self._source.stream():  # type: ignore[attr-defined]
                yield chunk
        else:
            yield self.done.result().data


def _mark_retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
