"""Side-by-side timing: several runs measured round by round, so that drifting machine load touches all alike.

Every comparison the project prints (verify's speed-up over the r = 0 baseline, bench's r sweep, the benchmark
scripts) goes through ``time_interleaved``: each round calls every run once, in an order that rotates from round
to round, and the figures are medians and percentiles over rounds. numpy only: engines time without torch."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from fastast_deploy.errors import ConfigError

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Timing:
    """One run's figures over ``rounds`` timed calls of ``batch`` clips each (latencies per call, in ms)."""

    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    clips_per_s: float  # batch / median latency
    rounds: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarise(seconds: list[float], batch: int) -> Timing:
    """Percentiles of per-call latencies (seconds) and the throughput at the median."""
    if not seconds:
        raise ConfigError("no timed rounds to summarise; rounds must be >= 1")
    p50, p90, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 90, 99])
    return Timing(float(p50), float(p90), float(p99), batch / (float(p50) / 1e3), len(seconds))


def time_interleaved(runs: Mapping[K, Callable[[], object]], *, batch: int = 1, warmup: int = 1,
                     rounds: int = 10, clock: Callable[[], float] = time.perf_counter) -> dict[K, Timing]:
    """Time every run side by side: ``warmup`` untimed calls each, then ``rounds`` rounds in which every run is
    called once, the order rotating by one each round (no run always goes first, after the same neighbour).
    A run must return only once its work is complete (engines return host arrays, so it is)."""
    if rounds < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"timing needs rounds >= 1, warmup >= 0 and batch >= 1; got {rounds}, {warmup}, {batch}")
    keys = list(runs)
    for key in keys:
        for _ in range(warmup):
            runs[key]()
    seconds: dict[K, list[float]] = {key: [] for key in keys}
    for round_index in range(rounds):
        shift = round_index % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            start = clock()
            runs[key]()
            seconds[key].append(clock() - start)
    return {key: summarise(seconds[key], batch) for key in keys}


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (what every benchmark prints it ran on), else platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
