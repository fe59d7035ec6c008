"""Rate limiting: one token bucket per key (a namespace). Pure: the clock is injected.

A bucket holds up to L events' worth of credit, L being the current per-minute limit, and
refills continuously at L per minute; a new bucket starts full (a burst of L, as in the
original). Each event takes one event's worth; an event that finds less is refused without
taking anything, and the limiter says how long until it would pass. Buckets are independent, so
one namespace at its limit costs the others nothing (fairness), and credit is counted in
integers (an event is 60e9 units, the bucket gains L units per nanosecond), so the limits are
exact: no float drift lets a 61st event through or refuses the 60th.

Buckets that have refilled completely are equivalent to absent ones and are dropped by
`prune`, which `take` runs now and then, so idle namespaces cost no memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

NS_PER_SECOND = 1_000_000_000
UNIT = 60 * NS_PER_SECOND  # one event's worth of credit
PRUNE_EVERY_NS = 60 * NS_PER_SECOND
REFILL_NS = 60 * NS_PER_SECOND  # an idle bucket is full again after a minute, whatever L


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` returns seconds (monotonic); tests pass a fake one."""
        self._clock = clock
        self._buckets: dict[str, list[int]] = {}  # key -> [credit units, last refill ns]
        self._last_prune = self._now()

    def __len__(self) -> int:
        return len(self._buckets)

    def _now(self) -> int:
        return round(self._clock() * NS_PER_SECOND)

    def take(self, key: str, per_minute: int) -> float:
        """Take one event from `key`'s bucket under a limit of `per_minute` events per minute.
        Returns 0.0 when the event may pass, else the seconds until it would (nothing taken)."""
        now = self._now()
        if now - self._last_prune >= PRUNE_EVERY_NS:
            self.prune(now)
        capacity = per_minute * UNIT
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [capacity - UNIT, now]
            return 0.0
        credit = min(capacity, bucket[0] + max(0, now - bucket[1]) * per_minute)
        bucket[1] = now
        if credit >= UNIT:
            bucket[0] = credit - UNIT
            return 0.0
        bucket[0] = credit
        wait_ns = -(-(UNIT - credit) // per_minute)  # ceiling division
        return wait_ns / NS_PER_SECOND

    def take_many(self, key: str, per_minute: int, count: int) -> tuple[int, float]:
        """Take up to `count` events from `key`'s bucket (as many as it holds: a batch is
        admitted in part). Returns how many were taken and, when that is fewer than `count`,
        the seconds until one more would pass (else 0.0). The arithmetic of `take`, which stays
        separate because it runs once per published event."""
        if count <= 0:
            return 0, 0.0
        now = self._now()
        if now - self._last_prune >= PRUNE_EVERY_NS:
            self.prune(now)
        capacity = per_minute * UNIT
        bucket = self._buckets.get(key)
        if bucket is None:
            credit = capacity
        else:
            credit = min(capacity, bucket[0] + max(0, now - bucket[1]) * per_minute)
        taken = min(count, credit // UNIT)
        credit -= taken * UNIT
        self._buckets[key] = [credit, now]
        if taken == count:
            return taken, 0.0
        wait_ns = -(-(UNIT - credit) // per_minute)  # ceiling division
        return taken, wait_ns / NS_PER_SECOND

    def prune(self, now: int | None = None) -> int:
        """Drop buckets that are full again (whatever the limit, a bucket idle for a minute is);
        returns how many were dropped."""
        now = self._now() if now is None else now
        self._last_prune = now
        stale = [key for key, (_, last) in self._buckets.items() if now - last >= REFILL_NS]
        for key in stale:
            del self._buckets[key]
        return len(stale)


def retry_after(wait: float) -> int:
    """The `Retry-After` header value for a wait in seconds: whole seconds, rounded up, at
    least 1."""
    return max(1, math.ceil(wait))
