"""The disk tier: images as files that outlive the process, bounded in bytes, damage a miss."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time

from tornado_imagegate.images.cache import CachedImage, EvictingLRU, content_digest

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{32,64}$")
_DISK_SUFFIX = ".img"
_DISK_MAGIC = b"IMAGEGATE1\n"
# A temporary file older than this is a crashed write's leftover; a younger one may be another
# process's write in progress (a write of the largest image takes well under a second).
_LEFTOVER_SECONDS = 600
# The index is rebuilt from the directory each time this process has written this share of the
# bound, so that what other processes wrote counts towards it too.
_RESCAN_SHARE = 16


class DiskTier:
    """Images as files, written atomically, bounded in bytes, least recently used evicted first.

    A file is a header line (JSON: type, validators, length, digest) and the bytes. A file that is
    short, corrupt or unreadable is a miss and is removed.

    Several processes may share the directory (workers, gateways on one box). A file is written
    under a temporary name and renamed into place, so it is whole or absent. A key this
    process's index does not know is looked for as a file, and admitted when found: every
    process serves every image in the directory, whenever it was written. Each process evicts
    from its own index, ordered by the files' modification times (a hit touches its file, so
    they are the recency all processes share), and rebuilds the index from the directory each
    time it has written a sixteenth of the bound: the directory then stays within about the
    bound plus a sixteenth of it per process writing.
    """

    name = "disk"

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.evictions = 0
        self._max_bytes = max_bytes
        self._written = 0  # bytes written since the index was last built
        self._index: EvictingLRU = self._new_index()
        self._scan()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + _DISK_SUFFIX)

    def _new_index(self) -> EvictingLRU:
        return EvictingLRU(self._max_bytes, lambda size: size, self._evicted)

    def _scan(self) -> None:
        """Build the index from the files there, oldest access first; crashed writes' leftovers
        go."""
        entries = []
        leftover = time.time() - _LEFTOVER_SECONDS
        with os.scandir(self.directory) as scan:
            for entry in scan:
                name = entry.name
                try:
                    stat = entry.stat()
                except OSError:  # removed by another process meanwhile
                    continue
                if name.startswith(".tmp-"):
                    if stat.st_mtime < leftover:
                        _remove(entry.path)
                elif name.endswith(_DISK_SUFFIX) and _KEY.match(name[: -len(_DISK_SUFFIX)]):
                    entries.append((stat.st_mtime, name[: -len(_DISK_SUFFIX)], stat.st_size))
        self._index = self._new_index()
        for _, key, size in sorted(entries):
            self._admit(key, size)
        self._written = 0

    def _admit(self, key: str, size: int) -> None:
        try:
            self._index[key] = size
        except ValueError:  # larger than the whole tier
            _remove(self._path(key))

    def _evicted(self, key: str, size: int) -> None:
        self.evictions += 1
        _remove(self._path(key))

    def get(self, key: str) -> CachedImage | None:
        """Read an image back, also one another process wrote; None when absent or damaged."""
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            image = _decode(raw)
        except FileNotFoundError:  # never written, or evicted by another process
            self._index.pop(key, None)
            return None
        except (OSError, ValueError) as exc:
            logger.warning(
                "disk cache entry %s unusable (%s); treated as a miss", key[:8], type(exc).__name__
            )
            self._index.pop(key, None)
            _remove(path)
            return None
        self._admit(key, len(raw))  # refresh its place in the LRU, or add it
        _touch(path)
        return image

    def put(self, key: str, image: CachedImage) -> bool:
        """Write an image atomically: a temporary file, then a rename into place."""
        encoded = _encode(image)
        if len(encoded) > self._index.maxsize:
            return False
        temporary = ""
        try:
            fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded)
            os.replace(temporary, self._path(key))
        except OSError as exc:
            logger.warning("could not write disk cache entry %s: %s", key[:8], exc.strerror)
            _remove(temporary)
            return False
        self._admit(key, len(encoded))
        self._written += len(encoded)
        if self._written * _RESCAN_SHARE >= self._max_bytes:
            self._scan()
        return True

    def __contains__(self, key: str) -> bool:
        return os.path.exists(self._path(key))  # the index may not know another process's file

    @property
    def current_bytes(self) -> int:
        """Total bytes of the files held."""
        return int(self._index.currsize)


def _encode(image: CachedImage) -> bytes:
    header = {
        "content_type": image.content_type,
        "etag": image.etag,
        "last_modified": image.last_modified,
        "length": len(image.data),
        "sha256": image.digest or content_digest(image.data),
    }
    return _DISK_MAGIC + json.dumps(header).encode() + b"\n" + image.data


def _decode(raw: bytes) -> CachedImage:
    if not raw.startswith(_DISK_MAGIC):
        raise ValueError("no header")
    header_line, sep, data = raw[len(_DISK_MAGIC) :].partition(b"\n")
    if not sep:
        raise ValueError("truncated header")
    header = json.loads(header_line)
    try:
        if len(data) != header["length"]:
            raise ValueError("truncated body")
        digest = header.get("sha256", "")
        if digest:
            intact = content_digest(data) == digest
        else:  # written by 0.1.0 before the switch to SHA-256
            intact = hashlib.blake2b(data, digest_size=16).hexdigest() == header["blake2b"]
        if not intact:
            raise ValueError("corrupt body")
        etag, modified = header["etag"], header["last_modified"]
        return CachedImage(data, header["content_type"], etag, modified, digest)
    except (KeyError, TypeError):
        raise ValueError("incomplete header") from None


def _remove(path: str) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass
