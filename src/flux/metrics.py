"""Live figures: event rate over a sliding window and active publishers. Pure, with an injected
clock, so tests need no sleeping."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

RATE_WINDOW_SECONDS = 5
PUBLISHER_WINDOW_SECONDS = 10.0


class EventMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: deque[list[int]] = deque()  # [whole second, count], oldest first
        self._publishers: dict[str, float] = {}

    def record(self, count: int, sources: Iterable[str] = ()) -> None:
        now = self.clock()
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
            self._trim(second)
        self._publishers.update(dict.fromkeys(sources, now))  # in C: one source per event

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - RATE_WINDOW_SECONDS:
            self._buckets.popleft()

    def rate_per_second(self) -> float:
        """Mean events per second over the last RATE_WINDOW_SECONDS whole seconds (the current,
        partial second included); 0 once traffic has stopped for that long."""
        second = int(self.clock())
        self._trim(second)
        total = sum(count for _, count in self._buckets)
        return round(total / RATE_WINDOW_SECONDS, 1)

    def active_publishers(self) -> int:
        """Distinct sources seen in the last PUBLISHER_WINDOW_SECONDS (older ones are pruned)."""
        cutoff = self.clock() - PUBLISHER_WINDOW_SECONDS
        stale = [s for s, seen in self._publishers.items() if seen < cutoff]
        for source in stale:
            del self._publishers[source]
        return len(self._publishers)
