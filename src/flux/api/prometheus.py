"""GET /metrics in the Prometheus text format, and the latency histograms it reports (filled by
`flux.api.edge.Edge`)."""

from __future__ import annotations

from bisect import bisect_left

from starlette.requests import Request
from starlette.responses import Response

from flux.live import Live

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Label values come from a fixed set, so a client cannot grow the series without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1


Histograms = dict[tuple[str, str, str], Histogram]
# Requests answered in the HTTP protocol itself, by route template (flux.api.hotpaths); empty
# when `flux serve` runs without the hot paths.
HotCounts = dict[str, int]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(live: Live, histograms: Histograms, hot: HotCounts) -> str:
    service = live.service
    lines = [
        "# HELP flux_events_total Events in the log (its last sequence).",
        "# TYPE flux_events_total counter",
        f"flux_events_total {service.engine.last_seq}",
        "# HELP flux_events_rate_per_second Events per second over the last 5 seconds.",
        "# TYPE flux_events_rate_per_second gauge",
        f"flux_events_rate_per_second {live.metrics.rate_per_second()}",
        "# HELP flux_entities Entities in the state.",
        "# TYPE flux_entities gauge",
        f"flux_entities {len(service.engine)}",
        "# HELP flux_websocket_connections Open live connections (WebSocket and SSE).",
        "# TYPE flux_websocket_connections gauge",
        f"flux_websocket_connections {live.connections}",
        "# HELP flux_publishers_active Distinct event sources in the last 10 seconds.",
        "# TYPE flux_publishers_active gauge",
        f"flux_publishers_active {live.metrics.active_publishers()}",
        "# HELP flux_live_slow_consumer_closes_total Live connections closed because their "
        "client did not keep up (outbox over its bound, or a send past the send timeout).",
        "# TYPE flux_live_slow_consumer_closes_total counter",
        *(
            f'flux_live_slow_consumer_closes_total{{transport="{transport}"}} {count}'
            for transport, count in live.slow_closes.items()
        ),
    ]
    if hot:
        lines += [
            "# HELP flux_http_hot_path_requests_total Requests answered in the HTTP protocol "
            "itself, below the ASGI app (FLUX_HOT_PATHS).",
            "# TYPE flux_http_hot_path_requests_total counter",
            *(
                f'flux_http_hot_path_requests_total{{route="{_escape(route)}"}} {count}'
                for route, count in sorted(hot.items())
            ),
        ]
    if histograms:
        lines += [
            "# HELP flux_http_request_duration_seconds HTTP request latency.",
            "# TYPE flux_http_request_duration_seconds histogram",
        ]
        for (method, route, status), hist in sorted(histograms.items()):
            labels = f'method="{method}",route="{_escape(route)}",status="{status}"'
            cumulative = 0
            for bound, count in zip(BUCKETS, hist.counts, strict=False):
                cumulative += count
                lines.append(
                    f'flux_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} '
                    f"{cumulative}"
                )
            lines.append(
                f'flux_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {hist.count}'
            )
            lines.append(f"flux_http_request_duration_seconds_sum{{{labels}}} {hist.total}")
            lines.append(f"flux_http_request_duration_seconds_count{{{labels}}} {hist.count}")
    return "\n".join(lines) + "\n"


async def metrics_endpoint(request: Request) -> Response:
    live: Live = request.app.state.live
    histograms: Histograms = request.app.state.histograms
    hot: HotCounts = request.app.state.hot_counts
    return Response(
        render(live, histograms, hot), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
