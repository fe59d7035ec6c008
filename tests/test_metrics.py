"""EventMetrics (flux.metrics): pure, driven by a fake clock, so no sleeping."""

from __future__ import annotations

from flux.metrics import PUBLISHER_WINDOW_SECONDS, RATE_WINDOW_SECONDS, EventMetrics


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rate_is_zero_before_any_event() -> None:
    metrics = EventMetrics(Clock())
    assert metrics.rate_per_second() == 0.0
    assert metrics.active_publishers() == 0


def test_rate_is_the_mean_over_the_window_including_the_current_second() -> None:
    clock = Clock(1000.5)
    metrics = EventMetrics(clock)
    metrics.record(10)
    assert metrics.rate_per_second() == 10 / RATE_WINDOW_SECONDS
    clock.now = 1001.2
    metrics.record(15)
    assert metrics.rate_per_second() == 25 / RATE_WINDOW_SECONDS


def test_rate_falls_to_zero_when_traffic_stops() -> None:
    clock = Clock(1000.0)
    metrics = EventMetrics(clock)
    for _ in range(50):
        metrics.record(1)
    assert metrics.rate_per_second() == 10.0
    clock.now = 1004.999  # still within the window
    assert metrics.rate_per_second() == 10.0
    clock.now = 1005.0  # the busy second left the window: no freezing at the last value
    assert metrics.rate_per_second() == 0.0
    clock.now = 5000.0
    assert metrics.rate_per_second() == 0.0


def test_rate_slides_with_steady_traffic() -> None:
    clock = Clock(0.0)
    metrics = EventMetrics(clock)
    for second in range(20):
        clock.now = second + 0.5
        metrics.record(second)  # second n carries n events
        window = range(max(0, second - RATE_WINDOW_SECONDS + 1), second + 1)
        assert metrics.rate_per_second() == round(sum(window) / RATE_WINDOW_SECONDS, 1)
    assert len(metrics._buckets) <= RATE_WINDOW_SECONDS  # old seconds are pruned


def test_rate_is_rounded_to_one_decimal() -> None:
    metrics = EventMetrics(Clock(3.0))
    metrics.record(1)
    metrics.record(2)
    assert metrics.rate_per_second() == 0.6


def test_active_publishers_counts_distinct_sources_in_the_window() -> None:
    clock = Clock(100.0)
    metrics = EventMetrics(clock)
    metrics.record(3, ["a", "b", "a"])
    assert metrics.active_publishers() == 2
    clock.now = 105.0
    metrics.record(1, ["c"])
    metrics.record(1, ["a"])  # seen again: its window restarts
    assert metrics.active_publishers() == 3
    clock.now = 100.0 + PUBLISHER_WINDOW_SECONDS + 0.001  # "b" is now too old
    assert metrics.active_publishers() == 2
    clock.now = 105.0 + PUBLISHER_WINDOW_SECONDS + 0.001
    assert metrics.active_publishers() == 0
    assert metrics._publishers == {}  # pruned, not merely hidden


def test_sources_can_be_any_iterable_consumed_once() -> None:
    metrics = EventMetrics(Clock())
    metrics.record(2, (s for s in ["x", "y"]))
    assert metrics.active_publishers() == 2


def test_default_clock_is_monotonic() -> None:
    metrics = EventMetrics()
    metrics.record(5, ["s"])
    assert metrics.rate_per_second() == 1.0
    assert metrics.active_publishers() == 1
