"""Side-by-side timing: several runs measured round by round, so that drifting machine load touches all alike.

Every comparison the project prints (verify's speed-up over the r = 0 baseline, bench's r sweep, the benchmark
scripts) goes through ``time_interleaved``: each round calls every run once, in an order that rotates from round
to round, and the figures are medians and percentiles over rounds. numpy only: engines time without torch.

On a CPU a call runs at the speed a steady stream of requests gets only when it follows a call of its own, and
ONNX Runtime's threads spin on for a while after a run, taking a core from whatever is timed next; both shrink
speed-ups (docs/benchmarks.md, "How speed is timed on a CPU"). ``rewarm_s`` gives every timed call that steady
state: the same run is first called untimed until that long has passed (at least once), which also outlasts the
previous run's spinning. CPU callers pass ``engines.base.CPU_REWARM_S`` (engines say what they need:
``Engine.rewarm_s``); on a GPU it is 0."""

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
                     rounds: int = 10, rewarm_s: float = 0.0,
                     clock: Callable[[], float] = time.perf_counter) -> dict[K, Timing]:
    """Time every run side by side: ``warmup`` untimed calls each, then ``rounds`` rounds in which every run is
    timed once, the order rotating by one each round (no run always goes first, after the same neighbour). With
    ``rewarm_s`` > 0 each timed call directly follows untimed calls of the same run lasting >= ``rewarm_s``
    (CPU_REWARM_S on a CPU, see above). A run must return only once its work is complete (engines return host
    arrays, so it is)."""
    if rounds < 1 or warmup < 0 or batch < 1 or not rewarm_s >= 0:
        raise ConfigError("timing needs rounds >= 1, warmup >= 0, batch >= 1 and rewarm_s >= 0; got "
                          f"{rounds}, {warmup}, {batch}, {rewarm_s}")
    keys = list(runs)
    for key in keys:
        for _ in range(warmup):
            runs[key]()
    seconds: dict[K, list[float]] = {key: [] for key in keys}
    for round_index in range(rounds):
        shift = round_index % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            if rewarm_s:
                _rewarm(runs[key], rewarm_s, clock)
            start = clock()
            runs[key]()
            seconds[key].append(clock() - start)
    return {key: summarise(seconds[key], batch) for key in keys}


def _rewarm(run: Callable[[], object], seconds: float, clock: Callable[[], float]) -> None:
    """Call ``run`` untimed until ``seconds`` have passed, at least once."""
    start = clock()
    run()
    while clock() - start < seconds:
        run()


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (what every benchmark prints it ran on), else platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
