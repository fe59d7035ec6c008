"""GET /metrics: the live figures and HTTP request latencies in the Prometheus text format
(version 0.0.4), in-process."""

from __future__ import annotations

import math
import re
from collections import defaultdict

from starlette.testclient import TestClient

from flux.api.prometheus import BUCKETS

from .helpers import new_event

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)\})?'
    r" (?P<value>[-+]?(?:[0-9.eE+-]+|Inf|NaN))$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[str, dict[Labels, float]]:
    """Check the exposition format strictly and return name -> labels -> value."""
    assert text.endswith("\n")
    helped: set[str] = set()
    typed: dict[str, str] = {}
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, line
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in helped and name not in typed, line
            typed[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"sample before its TYPE: {line!r}"
        labels = tuple(LABEL.findall(match["labels"] or ""))
        assert labels not in samples[name], f"duplicate series: {line!r}"
        samples[name][labels] = float(match["value"])
    return samples


def scrape(client: TestClient) -> dict[str, dict[Labels, float]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def value(samples: dict[str, dict[Labels, float]], name: str) -> float:
    return samples[name][()]


def test_live_figures(client: TestClient) -> None:
    samples = scrape(client)
    assert value(samples, "flux_events_total") == 0
    assert value(samples, "flux_entities") == 0
    assert value(samples, "flux_events_rate_per_second") == 0
    assert value(samples, "flux_publishers_active") == 0
    assert value(samples, "flux_websocket_connections") == 0
    for n, source in enumerate(["a", "b", "a"]):
        response = client.post(
            "/api/events", json=new_event(f"ns/{n % 2}", {"v": n}, source=source)
        )
        assert response.status_code == 200
    assert client.delete("/api/state/entities/ns%2F0").status_code == 200
    with client.websocket_connect("/api/ws"), client.websocket_connect("/api/ws"):
        samples = scrape(client)
    assert value(samples, "flux_events_total") == 4  # three events and a tombstone
    assert value(samples, "flux_entities") == 1
    assert 0 < value(samples, "flux_events_rate_per_second") <= 4 / 5
    assert value(samples, "flux_publishers_active") == 3  # a, b and the API's deletes
    assert value(samples, "flux_websocket_connections") == 2


def test_request_latency_histograms(client: TestClient) -> None:
    for n in range(3):
        client.post("/api/events", json=new_event("ns/x", {"v": n}))
    client.post("/api/events", content=b"not json")
    client.get("/api/state/entities/ns%2Fx")
    client.get("/api/state/entities/ns%2Fmissing")
    client.get("/no/such/route")
    client.get("/docs/static/no-such-file.css")
    client.request("BREW", "/api/health")
    samples = scrape(client)
    counts = samples["flux_http_request_duration_seconds_count"]

    def key(method: str, route: str, status: str) -> Labels:
        return (("method", method), ("route", route), ("status", status))

    entity = "/api/state/entities/{entity_id:fullpath}"
    assert counts[key("POST", "/api/events", "2xx")] == 3
    assert counts[key("POST", "/api/events", "4xx")] == 1
    assert counts[key("GET", entity, "2xx")] == 1
    assert counts[key("GET", entity, "4xx")] == 1
    assert counts[key("GET", "unmatched", "4xx")] == 1
    assert counts[key("GET", "/docs/static", "4xx")] == 1
    assert counts[key("other", "/api/health", "4xx")] == 1  # no label per invented method
    buckets = samples["flux_http_request_duration_seconds_bucket"]
    sums = samples["flux_http_request_duration_seconds_sum"]
    for series, count in counts.items():
        cumulative = [buckets[(*series, ("le", str(bound)))] for bound in BUCKETS]
        assert cumulative == sorted(cumulative)
        assert buckets[(*series, ("le", "+Inf"))] == count >= cumulative[-1]
        assert 0 < sums[series] < math.inf


def test_the_scrape_itself_is_timed_on_the_next_one(client: TestClient) -> None:
    scrape(client)
    counts = scrape(client)["flux_http_request_duration_seconds_count"]
    assert counts[(("method", "GET"), ("route", "/metrics"), ("status", "2xx"))] == 1
