"""Running wrk (Debian's package) with bench/cycle.lua and reading its figures."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
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
