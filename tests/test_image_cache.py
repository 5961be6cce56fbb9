"""The image cache: a memory LRU bounded in bytes, over tiers (the disk, any other) in order."""

from __future__ import annotations

import hashlib
import json
import os
import time

from tornado_imagegate.images.cache import CachedImage, ImageCache
from tornado_imagegate.images.disk import DiskTier


def image(n: int, size: int = 1000) -> CachedImage:
    return CachedImage.build(bytes([n % 256]) * size, "image/png", last_modified=1_700_000_000)


def key(n: int) -> str:
    return f"{n:032x}"


def test_memory_lru_is_bounded_in_bytes_and_evicts_least_recently_used():
    cache = ImageCache(max_bytes=3500)
    for n in range(3):
        assert cache.put(key(n), image(n))
    assert cache.get(key(0)) is not None  # 0 is now the most recent
    cache.put(key(3), image(3))
    assert cache.current_bytes <= 3500
    assert cache.get(key(1)) is None
    assert cache.get(key(0)) is not None
    assert cache.evictions == 1


def test_item_over_the_limit_is_not_stored_and_does_not_raise():
    cache = ImageCache(max_bytes=10_000, max_item_bytes=2_000)
    assert not cache.put(key(1), image(1, size=5_000))
    assert cache.get(key(1)) is None


def test_etag_is_computed_once_from_the_content():
    a, b = image(1), image(1)
    assert a.etag == b.etag and a.etag.startswith('"')
    assert image(2).etag != a.etag


def test_disk_tier_survives_a_new_instance(tmp_path):
    first = ImageCache(10_000, tiers=[DiskTier(str(tmp_path), 100_000)])
    first.put(key(7), image(7))
    second = ImageCache(10_000, tiers=[DiskTier(str(tmp_path), 100_000)])
    found = second.get(key(7))
    assert found == image(7)
    assert key(7) in second


class SharedTier:
    """The smallest further tier: a dict, standing in for a store that gateways share."""

    name = "shared"

    def __init__(self) -> None:
        self.images: dict[str, CachedImage] = {}
        self.evictions = 0
        self.reads = 0

    def get(self, key: str) -> CachedImage | None:
        self.reads += 1
        return self.images.get(key)

    def put(self, key: str, image: CachedImage) -> bool:
        self.images[key] = image
        return True

    def __contains__(self, key: str) -> bool:
        return key in self.images

    @property
    def current_bytes(self) -> int:
        return sum(len(image.data) for image in self.images.values())


def test_a_further_tier_is_asked_after_the_disk_and_its_hits_are_promoted(tmp_path):
    shared = SharedTier()
    first = ImageCache(10_000, tiers=[DiskTier(str(tmp_path / "first"), 100_000), shared])
    assert first.put(key(1), image(1))
    assert shared.images == {key(1): image(1)}  # stored into every tier
    disk = DiskTier(str(tmp_path / "second"), 100_000)
    second = ImageCache(10_000, tiers=[disk, shared])  # another gateway, the same shared tier
    assert key(1) in second
    assert second.get(key(1)) == image(1)
    assert len(second) == 1  # promoted into memory
    assert disk.get(key(1)) == image(1)  # and into the tier above
    reads = shared.reads
    assert second.get(key(1)) == image(1)
    assert shared.reads == reads
    assert second.get(key(2)) is None
    assert (second.hits, second.misses) == (2, 1)


def test_disk_tier_is_bounded_in_bytes(tmp_path):
    disk = DiskTier(str(tmp_path), 5_000)
    for n in range(10):
        disk.put(key(n), image(n))
    assert disk.current_bytes <= 5_000
    assert sum(os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path)) <= 5_000
    assert disk.get(key(9)) is not None
    assert disk.get(key(0)) is None
    assert disk.evictions > 0


def test_damaged_files_are_misses_and_are_removed(tmp_path):
    disk = DiskTier(str(tmp_path), 100_000)
    for n in range(3):
        disk.put(key(n), image(n))
    path = tmp_path / f"{key(0)}.img"
    path.write_bytes(path.read_bytes()[:-10])  # a partial write
    other = tmp_path / f"{key(1)}.img"
    raw = bytearray(other.read_bytes())
    raw[-1] ^= 0xFF  # a flipped bit
    other.write_bytes(bytes(raw))
    (tmp_path / f"{key(2)}.img").write_bytes(b"garbage")
    restarted = DiskTier(str(tmp_path), 100_000)
    for n in range(3):
        assert restarted.get(key(n)) is None
    assert not list(tmp_path.iterdir())


def test_leftover_temporary_files_are_cleaned_at_start(tmp_path):
    (tmp_path / ".tmp-abc").write_bytes(b"half an image")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / ".tmp-abc", (an_hour_ago, an_hour_ago))  # a crashed write's leftover
    (tmp_path / "unrelated.txt").write_text("kept")
    DiskTier(str(tmp_path), 100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt"]


def test_another_process_write_in_progress_is_left_alone_and_never_served(tmp_path):
    disk = DiskTier(str(tmp_path), 100_000)
    disk.put(key(1), image(1))
    # Another process sharing the directory is writing the same image under a temporary name,
    # and a third starts meanwhile.
    (tmp_path / ".tmp-other").write_bytes((tmp_path / f"{key(1)}.img").read_bytes()[:100])
    starting = DiskTier(str(tmp_path), 100_000)
    assert (tmp_path / ".tmp-other").exists()
    assert starting.get(key(2)) is None
    assert starting.get(key(1)) == image(1)


def test_images_another_process_writes_later_are_served(tmp_path):
    """Two gateways share one directory: each finds what the other wrote after it started."""
    first, second = DiskTier(str(tmp_path), 100_000), DiskTier(str(tmp_path), 100_000)
    first.put(key(1), image(1))
    second.put(key(2), image(2))
    assert key(1) in second and key(2) in first
    assert second.get(key(1)) == image(1)
    assert first.get(key(2)) == image(2)
    cache = ImageCache(10_000, tiers=[first])  # a memory miss looks at the disk
    second.put(key(3), image(3))
    assert cache.get(key(3)) == image(3)


def test_what_other_processes_write_counts_towards_the_bound(tmp_path):
    first, second = DiskTier(str(tmp_path), 20_000), DiskTier(str(tmp_path), 20_000)
    for n in range(20):
        first.put(key(n), image(n))
        second.put(key(100 + n), image(100 + n))
    on_disk = sum(os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path))
    assert on_disk <= 20_000 * (1 + 2 / 16)
    assert second.get(key(119)) == image(119)  # the most recent stay
    assert first.get(key(0)) is None  # the oldest went


def test_entries_written_before_the_switch_to_sha256_are_still_read(tmp_path):
    data = b"\x89PNG\r\n\x1a\n" + bytes(500)
    header = {
        "content_type": "image/png",
        "etag": '"0123456789abcdef0123456789abcdef"',
        "last_modified": 1_700_000_000,
        "length": len(data),
        "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest(),
    }
    (tmp_path / f"{key(5)}.img").write_bytes(
        b"IMAGEGATE1\n" + json.dumps(header).encode() + b"\n" + data
    )
    (tmp_path / f"{key(6)}.img").write_bytes(
        b"IMAGEGATE1\n" + json.dumps({**header, "blake2b": "0" * 32}).encode() + b"\n" + data
    )
    (tmp_path / f"{key(8)}.img").write_bytes(b'IMAGEGATE1\n{"length": 3}\nabc')
    disk = DiskTier(str(tmp_path), 100_000)
    found = disk.get(key(5))
    assert found is not None and found.data == data and found.etag == header["etag"]
    assert disk.get(key(6)) is None  # corrupt: a miss, and removed
    assert disk.get(key(8)) is None  # a header without its fields: a miss too
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key(5)}.img"]
