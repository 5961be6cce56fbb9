"""Provider keys: rotation, failover order, and the one cooldown policy for every key pool."""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tornado_imagegate.errors import UpstreamError

if TYPE_CHECKING:
    from tornado_imagegate.config import Settings
    from tornado_imagegate.redis_link import KeyHealthBoard

# How long a key rests, in seconds.
COOLDOWN_TRANSIENT = 15.0  # after KEY_ALLOWED_FAILS transient failures within FAIL_WINDOW
COOLDOWN_RATE_LIMITED = 30.0  # 429 without Retry-After
COOLDOWN_AUTH = 600.0  # 401/403: the key itself is wrong or revoked (not capped, see below)
FAIL_WINDOW = 60.0
DEFAULT_ALLOWED_FAILS = 3
DEFAULT_MAX_COOLDOWN = 300.0


class Outcome(enum.StrEnum):
    """What an upstream answer (or the lack of one) says about the key that was used."""

    OK = "ok"
    TRANSIENT = "transient"  # 408, 5xx, connection errors, timeouts: counted, rested after several
    RATE_LIMITED = "rate_limited"  # 429: rested at once, for Retry-After (capped)
    AUTH = "auth"  # 401/403: rested at once, for long
    REJECTED = "rejected"  # about the request itself: every key would get the same answer
    UNUSABLE = "unusable"  # an answer we cannot use that says nothing of the key

    @property
    def fails_over(self) -> bool:
        """Whether the next key should be tried for the same request."""
        return self in (Outcome.TRANSIENT, Outcome.RATE_LIMITED, Outcome.AUTH)


# Statuses that say the request itself is wrong (size, prompt, content filter).
REJECTED_STATUSES = frozenset({400, 413, 415, 422})
# Ways of getting no answer at all that are the upstream's passing trouble.
TRANSIENT_ERRORS = frozenset({"timeout", "connect", "bad_answer"})


def classify(result: int | UpstreamError) -> Outcome:
    """The outcome of one upstream call: an HTTP status, or the UpstreamError it raised."""
    if isinstance(result, UpstreamError):
        # too_large, refused_address, cancelled: not the key's fault.
        return Outcome.TRANSIENT if result.kind in TRANSIENT_ERRORS else Outcome.UNUSABLE
    if 200 <= result < 300:
        return Outcome.OK
    if result == 429:
        return Outcome.RATE_LIMITED
    if result in (401, 403):
        return Outcome.AUTH
    if result == 408 or result >= 500:
        return Outcome.TRANSIENT
    if result in REJECTED_STATUSES:
        return Outcome.REJECTED
    return Outcome.UNUSABLE


@dataclass(frozen=True)
class CooldownPolicy:
    """When failures rest a key: ``KEY_ALLOWED_FAILS`` and ``KEY_MAX_COOLDOWN_SECONDS``."""

    allowed_fails: int = DEFAULT_ALLOWED_FAILS
    max_cooldown: float = DEFAULT_MAX_COOLDOWN
    window: float = FAIL_WINDOW


DEFAULT_POLICY = CooldownPolicy()


def cooldown_policy(settings: Settings) -> CooldownPolicy:
    """The policy the configuration asks for."""
    return CooldownPolicy(settings.key_allowed_fails, settings.key_max_cooldown_seconds)


class KeyPool:
    """The keys of one provider group (or of the prompt optimiser).

    Each request starts at the next key (round robin), then fails over through the others.
    Rests follow LiteLLM's rules: a transient failure rests a key only after
    ``allowed_fails`` of them within ``window`` seconds, and never the last usable key; a 429 or
    401/403 rests it at once; when every key rests, the one whose rest ends first is tried
    anyway, so that no group goes offline without a call.

    With ``health`` (a ``shared.KeyHealthBoard``, set by ``watch``), rests and transient
    failures are shared with the other instances, and their rests applied here.
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
        policy: CooldownPolicy = DEFAULT_POLICY,
        on_rest: Callable[[int, str], None] | None = None,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self.policy = policy
        self._on_rest = on_rest
        self._start = itertools.count()
        self._resting_until = [0.0] * len(keys)
        self._recent_fails: list[deque[float]] = [deque() for _ in keys]
        self.failures = [0] * len(keys)
        self.health: KeyHealthBoard | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The pool's keys, in configuration order."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def order(self) -> list[tuple[int, str]]:
        """The keys to try for one request, as (index, key): rotated, resting keys left out.

        When every key rests, the one whose rest ends first, alone.
        """
        if not self._keys:
            return []
        count = len(self._keys)
        first = next(self._start) % count
        now = self._clock()
        rotated = [i % count for i in range(first, first + count)]
        usable = [(i, self._keys[i]) for i in rotated if self._resting_until[i] <= now]
        if usable:
            return usable
        soonest = min(range(count), key=self._resting_until.__getitem__)
        return [(soonest, self._keys[soonest])]

    def record_success(self, index: int) -> None:
        """The key worked: its count of recent failures starts again, and any rest ends."""
        if self._recent_fails[index]:
            self._recent_fails[index].clear()
        if self._resting_until[index] and self.health is not None:
            self.health.recovered(self, index)
        self._resting_until[index] = 0.0

    def record_failure(
        self, index: int, outcome: Outcome, retry_after: float | None = None
    ) -> None:
        """Count a failed call with a key, and rest the key if the policy says so.

        Outcomes that say nothing about the key (rejected, unusable) are ignored.
        """
        policy = self.policy
        if outcome is Outcome.RATE_LIMITED:
            wait = retry_after if retry_after is not None else COOLDOWN_RATE_LIMITED
            self.failures[index] += 1
            self.rest(index, min(wait, policy.max_cooldown), outcome)
        elif outcome is Outcome.AUTH:
            self.failures[index] += 1
            self.rest(index, COOLDOWN_AUTH, outcome)
        elif outcome is Outcome.TRANSIENT:
            self.failures[index] += 1
            now = self._clock()
            recent = self._recent_fails[index]
            recent.append(now)
            while recent and recent[0] <= now - policy.window:
                recent.popleft()
            if len(recent) < policy.allowed_fails or not self._another_usable(index, now):
                if self.health is not None:
                    self.health.failed(self, index)
                return
            recent.clear()
            wait = retry_after if retry_after is not None else COOLDOWN_TRANSIENT
            self.rest(index, min(wait, policy.max_cooldown), outcome)

    def rest(self, index: int, seconds: float, reason: str = "") -> None:
        """Put a key aside for ``seconds`` (a shorter rest never cuts a longer one short)."""
        until = self._clock() + max(seconds, 0.0)
        if until > self._resting_until[index]:
            self._resting_until[index] = until
        if self._on_rest is not None:
            self._on_rest(index, reason)
        if self.health is not None:
            self.health.rested(self, index, max(seconds, 0.0))

    def apply_shared_rest(self, index: int, seconds: float) -> None:
        """Another instance rested this key for ``seconds`` more: rest it here too (not shared
        back); said once, when the key was not resting here already."""
        now = self._clock()
        until = now + seconds
        if until <= self._resting_until[index]:
            return
        was_resting = self._resting_until[index] > now
        self._resting_until[index] = until
        if not was_resting and self._on_rest is not None:
            self._on_rest(index, "shared")

    def rest_after_shared_failures(self, index: int) -> None:
        """The instances together saw ``allowed_fails`` transient failures of this key within
        the window: rest it, unless it is the last usable key."""
        if self._another_usable(index, self._clock()):
            self._recent_fails[index].clear()
            self.rest(index, min(COOLDOWN_TRANSIENT, self.policy.max_cooldown), Outcome.TRANSIENT)

    def _another_usable(self, index: int, now: float) -> bool:
        return any(until <= now for i, until in enumerate(self._resting_until) if i != index)

    def next_available_in(self) -> float:
        """Seconds until the first resting key may be tried again (0 if one is available)."""
        if not self._keys:
            return 0.0
        return max(0.0, min(self._resting_until) - self._clock())

    def resting(self) -> int:
        """How many keys are resting now."""
        now = self._clock()
        return sum(1 for until in self._resting_until if until > now)

    def all_resting(self) -> bool:
        """Whether every key rests now."""
        return bool(self._keys) and self.resting() == len(self._keys)
