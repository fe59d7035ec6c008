"""Running wrk (Debian's package) with bench/cycle.lua and reading its figures."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "cycle.lua"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    cpu_seconds: float  # wrk's own user + system CPU time
    text: str  # wrk's whole output

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"wrk (\S+)", out)
    return match.group(1) if match else "unknown"


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    *,
    method: str,
    mode: str,
    file: Path,
    path: str = "",
    threads: int,
    connections: int,
    seconds: float,
    timeout: float = 10.0,
) -> WrkResult:
    """Run wrk against `url` for `seconds`, cycling over the requests in `file` (see cycle.lua).
    Raises RuntimeError when wrk fails or prints no figures."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout:g}s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        method,
        mode,
        str(file),
        path,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = proc.stdout + proc.stderr
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(argv)}\n{text}")
    doc = json.loads(line.removeprefix("BENCH_JSON "))
    lat = doc["latency_us"]
    return WrkResult(
        requests=doc["requests"],
        seconds=doc["duration_us"] / 1e6,
        errors=doc["errors"],
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        mean_ms=lat["mean"] / 1000,
        max_ms=lat["max"] / 1000,
        cpu_seconds=cpu,
        text=text,
    )


def merge(parts: list[WrkResult]) -> WrkResult:
    """The results of wrk runs made at the same time against the nodes of one cluster, as one:
    requests and errors add up; wrk gives percentiles, not its histogram, so p50, p90 and the
    mean are the request-weighted means of the parts' and p99 and max the largest (an upper
    bound). The nodes are alike, so the parts' figures are close."""
    total = sum(p.requests for p in parts) or 1
    errors: dict[str, int] = {}
    for part in parts:
        for key, value in part.errors.items():
            errors[key] = errors.get(key, 0) + value

    def weighted(pick: Callable[[WrkResult], float]) -> float:
        return sum(pick(p) * p.requests for p in parts) / total

    return WrkResult(
        requests=sum(p.requests for p in parts),
        seconds=max(p.seconds for p in parts),
        errors=errors,
        p50_ms=weighted(lambda p: p.p50_ms),
        p90_ms=weighted(lambda p: p.p90_ms),
        p99_ms=max(p.p99_ms for p in parts),
        mean_ms=weighted(lambda p: p.mean_ms),
        max_ms=max(p.max_ms for p in parts),
        # Each part counted every wrk reaped while it ran (RUSAGE_CHILDREN is the process's),
        # so the parts' figures each hold about all of it.
        cpu_seconds=max(p.cpu_seconds for p in parts),
        text="\n".join(p.text for p in parts),
    )
