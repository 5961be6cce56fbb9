"""Provider keys: rotation from request to request, failover order, and cooldowns after failures."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

# How long a key rests after a failure, in seconds.
COOLDOWN_TRANSIENT = 15.0  # 5xx, timeouts, connection errors
COOLDOWN_RATE_LIMITED = 30.0  # 429 without Retry-After
COOLDOWN_AUTH = 600.0  # 401/403: the key itself is wrong or revoked
MAX_RETRY_AFTER = 3600.0


class KeyPool:
    """The keys of one provider group.

    Each request starts at the next key (round robin), then fails over through the others. A key
    that failed rests for a while; all resting means the group is unavailable for now.
    """

    def __init__(self, keys: tuple[str, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = keys
        self._clock = clock
        self._start = itertools.count()
        self._resting_until = [0.0] * len(keys)
        self.failures = [0] * len(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def order(self) -> list[tuple[int, str]]:
        """The keys to try for one request, as (index, key): rotated, resting keys left out."""
        if not self._keys:
            return []
        first = next(self._start) % len(self._keys)
        now = self._clock()
        rotated = [(i % len(self._keys)) for i in range(first, first + len(self._keys))]
        return [(i, self._keys[i]) for i in rotated if self._resting_until[i] <= now]

    def rest(self, index: int, seconds: float) -> None:
        """Put a key aside for ``seconds`` after it failed."""
        self.failures[index] += 1
        seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER)
        self._resting_until[index] = max(self._resting_until[index], self._clock() + seconds)

    def next_available_in(self) -> float:
        """Seconds until the first resting key may be tried again (0 if one is available)."""
        if not self._keys:
            return 0.0
        return max(0.0, min(self._resting_until) - self._clock())

    def resting(self) -> int:
        """How many keys are resting now."""
        now = self._clock()
        return sum(1 for until in self._resting_until if until > now)
