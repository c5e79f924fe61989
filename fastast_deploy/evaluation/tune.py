"""`fastast-deploy tune`: the search for a per-block ToMe r schedule, apart from what scores and times it.

The search works on three callables, so that it can be checked against a hand-made case: ``cost(schedule)`` (the
FLOP ratio, `model.flops.flop_ratio`), ``score(schedule)`` (the metric in points on the search clips) and
``time(schedules)`` (measured speed-ups over r = 0, all timed side by side). `tune_run` gives the real ones.

1. Sweep: constant r from 1 to the r that merges every token it can, then ToMe's (r, inflection) ramps
   (inflection -1, -0.5, +0.5) over the same range (with ``--speedup``, those whose FLOP ratio reaches it);
   each candidate costs one scoring pass.
2. Refine around the best sweep point: with ``--max-drop``, the schedule of the highest FLOP ratio within the
   drop is raised one block at a time (r_i + step) while a raised schedule stays within the drop, the step
   halving down to 1; with ``--speedup``, the most accurate schedule at or above the FLOP ratio moves r between
   neighbouring blocks (r_i + step, r_{i+1} - step and back) while that raises the metric.
3. Time: the Pareto front of FLOP ratio against metric among the schedules that qualify (at most ``timed`` of
   them), the best qualifying constant r and r = 0, built on the target backend and timed side by side.
4. Choose among the timed: the highest measured speed-up within the drop, or the most accurate schedule whose
   measured speed-up reaches ``--speedup``. The best constant r is always timed in the same run, so the choice
   is never slower than it.
"""

from __future__ import annotations

import time as clock
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fastast_deploy.errors import ConfigError, UsageError
from fastast_deploy.model.schedule import clip_schedule, make_schedule

Schedule = tuple[int, ...]
INFLECTIONS = (-1.0, -0.5, 0.5)  # the ramps of the sweep (0 is the constant r)
MAX_SWEEP_RS = 16  # constant r values swept at most; beyond, a spread over the range
BOOTSTRAP = 1000  # resamples of the clips for an interval


@dataclass(frozen=True)
class Target:
    """What the search looks for: ``max_drop`` points below r = 0 at most, or ``speedup`` at least (one of them)."""

    max_drop: float | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.speedup is None):
            raise ConfigError("give one of --max-drop and --speedup")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise ConfigError(f"--max-drop is in points, 0 to 100; got {self.max_drop}")
        if self.speedup is not None and not self.speedup > 1:
            raise ConfigError(f"--speedup must be above 1, got {self.speedup}")


@dataclass(frozen=True)
class Budget:
    """How long the search may run: ``candidates`` scored at most, or ``minutes`` (the timing step aside)."""

    candidates: int | None = 40
    minutes: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"40"`` (candidates) or ``"10m"`` (minutes)."""
        value = text.strip().lower()
        try:
            if value.endswith(("m", "min")):
                minutes = float(value.rstrip("min"))
                if not 0 < minutes <= 24 * 60:
                    raise ValueError
                return cls(candidates=None, minutes=minutes)
            count = int(value)
            if not 2 <= count <= 10_000:
                raise ValueError
            return cls(candidates=count)
        except ValueError:
            raise UsageError(f"--budget takes a number of candidates (2 to 10000) or minutes such as 10m, got "
                              f"{text!r}") from None


@dataclass
class Candidate:
    """One schedule (clipped per block as the model runs it) and what was measured of it. Metrics in points."""

    schedule: Schedule
    kind: str  # "baseline", "constant", "ramp", "refined"
    label: str
    flop_ratio: float = 1.0
    metric: float = float("nan")  # on the search clips
    drop: float = float("nan")  # r = 0's metric minus this one's, search clips
    interval: tuple[float, float] | None = None  # 95 % bootstrap interval of the drop
    speedup: float | None = None  # measured, where timed
    clips_per_s: float | None = None
    held_out: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"schedule": list(self.schedule), "kind": self.kind, "label": self.label,
                "flop_ratio": self.flop_ratio, "metric": self.metric, "drop": self.drop,
                "interval": None if self.interval is None else list(self.interval), "speedup": self.speedup,
                "clips_per_s": self.clips_per_s, "held_out": self.held_out, **self.extra}


def full_r(num_tokens: int, depth: int) -> int:
    """The smallest constant r past which a larger one merges no more (every block clipped to what it can)."""
    end = clip_schedule(num_tokens, (num_tokens,) * depth)
    r = 1
    while clip_schedule(num_tokens, (r,) * depth) != end and r < num_tokens:
        r += 1
    return r


def sweep(num_tokens: int, depth: int) -> list[Candidate]:
    """r = 0, the constant r values, then the (r, inflection) ramps; duplicates (after clipping) dropped."""
    top = full_r(num_tokens, depth)
    if top <= MAX_SWEEP_RS:
        rs = list(range(1, top + 1))
    else:  # denser where r is small, where most schedules within a small drop lie
        rs = sorted({max(1, round(top * (i / MAX_SWEEP_RS) ** 1.5)) for i in range(1, MAX_SWEEP_RS + 1)})
    out = [Candidate((0,) * depth, "baseline", "r=0")]
    seen = {out[0].schedule}
    ramps = [(r, f) for f in INFLECTIONS for r in rs[1::2] if depth > 1]
    for r, inflection in [(r, 0.0) for r in rs] + ramps:
        schedule = clip_schedule(num_tokens, make_schedule(r, depth, inflection))
        if schedule in seen:
            continue
        seen.add(schedule)
        kind, label = ("constant", f"r={r}") if inflection == 0 else ("ramp", f"r={r} inflection {inflection:+g}")
        out.append(Candidate(schedule, kind, label))
    return out


class Search:
    """The search itself: ``run`` sweeps and refines within the budget; ``choose`` picks from the timed."""

    def __init__(self, num_tokens: int, depth: int, target: Target, budget: Budget,
                 cost: Callable[[Schedule], float], score: Callable[[Schedule], float],
                 progress: Callable[[Candidate, int], None] | None = None) -> None:
        self.num_tokens, self.depth, self.target, self.budget = num_tokens, depth, target, budget
        self.cost, self.score, self.progress = cost, score, progress
        self.results: dict[Schedule, Candidate] = {}
        self.started = clock.monotonic()
        self.exhausted = False
        self.base: Candidate | None = None

    def within_budget(self) -> bool:
        if self.budget.candidates is not None and len(self.results) >= self.budget.candidates:
            self.exhausted = True
        if self.budget.minutes is not None and clock.monotonic() - self.started > 60 * self.budget.minutes:
            self.exhausted = True
        return not self.exhausted

    def measure(self, candidate: Candidate) -> Candidate | None:
        """Score ``candidate`` (once per schedule); None once the budget is spent."""
        schedule = clip_schedule(self.num_tokens, candidate.schedule)
        if schedule in self.results:
            return self.results[schedule]
        if candidate.kind != "baseline" and not self.within_budget():
            return None
        metric = float(self.score(schedule))
        base = metric if self.base is None else self.base.metric
        label = "r " + ",".join(map(str, schedule)) if candidate.kind == "refined" else candidate.label
        done = replace(candidate, schedule=schedule, label=label, flop_ratio=float(self.cost(schedule)),
                       metric=metric, drop=base - metric)
        self.results[schedule] = done
        if candidate.kind == "baseline":
            self.base = done
        if self.progress is not None:
            self.progress(done, len(self.results))
        return done

    def qualifies(self, c: Candidate) -> bool:
        """Within the drop (search clips), or at or above the speed-up by FLOP ratio (the proxy until timed)."""
        if self.target.max_drop is not None:
            return c.drop <= self.target.max_drop + 1e-9
        assert self.target.speedup is not None
        return c.flop_ratio >= self.target.speedup - 1e-9

    def best(self) -> Candidate | None:
        """The best qualifying schedule by the proxy: highest FLOP ratio (then metric), or highest metric."""
        found = [c for c in self.results.values() if self.qualifies(c) and c.kind != "baseline"]
        if not found:
            return None
        if self.target.max_drop is not None:
            return max(found, key=lambda c: (c.flop_ratio, c.metric))
        return max(found, key=lambda c: (c.metric, c.flop_ratio))

    def run(self) -> list[Candidate]:
        """Sweep, then refine; every scored candidate, in the order scored."""
        candidates = sweep(self.num_tokens, self.depth)
        if self.target.speedup is not None:  # below the speed-up by FLOP ratio, no measured one reaches it
            candidates = [c for c in candidates if c.kind == "baseline" or self.cost(c.schedule) >= self.target.speedup]
        constants = [c for c in candidates if c.kind in ("baseline", "constant")]
        ramps = [c for c in candidates if c.kind == "ramp"]
        for candidate in constants:
            if self.measure(candidate) is None:
                break
        # the ramps nearest in FLOP ratio to the best constant first: a short budget spends itself where it counts
        anchor = self.best()
        if anchor is not None:
            ramps.sort(key=lambda c: abs(self.cost(c.schedule) - anchor.flop_ratio))
        for candidate in ramps:
            if self.measure(candidate) is None:
                break
        self.refine()
        return list(self.results.values())

    def refine(self) -> None:
        current = self.best()
        if current is None:
            return
        step = max(1, max(current.schedule) // 4)
        while step >= 1 and not self.exhausted:
            if self.target.max_drop is not None:
                moves = [self._with(current.schedule, {i: step}) for i in range(self.depth)]
            else:
                moves = [self._with(current.schedule, {i: step, j: -step})
                         for i in range(self.depth) for j in (i - 1, i + 1) if 0 <= j < self.depth]
            tried = [self.measure(Candidate(s, "refined", "")) for s in dict.fromkeys(moves)
                     if s is not None and clip_schedule(self.num_tokens, s) != current.schedule]
            better = [c for c in tried if c is not None and self.qualifies(c) and self._improves(c, current)]
            if better:
                current = max(better, key=lambda c: (c.flop_ratio, c.metric) if self.target.max_drop is not None
                              else (c.metric, c.flop_ratio))
            else:
                step //= 2

    def _improves(self, c: Candidate, current: Candidate) -> bool:
        if self.target.max_drop is not None:
            return c.flop_ratio > current.flop_ratio
        return c.metric > current.metric

    def _with(self, schedule: Schedule, changes: dict[int, int]) -> Schedule | None:
        values = list(schedule)
        for i, delta in changes.items():
            values[i] += delta
        return tuple(values) if min(values) >= 0 else None


def to_time(results: Sequence[Candidate], search: Search, limit: int) -> list[Candidate]:
    """What is built and timed: r = 0, the best qualifying constant r, and the qualifying Pareto front (FLOP ratio
    against metric), at most ``limit`` of it (the fastest by FLOP ratio with --max-drop, the most accurate with
    --speedup)."""
    base = [c for c in results if c.kind == "baseline"]
    qualified = [c for c in results if c.kind != "baseline" and search.qualifies(c)]
    front = pareto(qualified)
    if search.target.max_drop is not None:
        front.sort(key=lambda c: -c.flop_ratio)
    else:
        front.sort(key=lambda c: -c.metric)
    chosen = front[:limit]
    constants = [c for c in qualified if c.kind == "constant"]
    if constants:
        best_constant = (max(constants, key=lambda c: (c.flop_ratio, c.metric)) if search.target.max_drop is not None
                         else max(constants, key=lambda c: (c.metric, c.flop_ratio)))
        if best_constant not in chosen:
            chosen.append(best_constant)
    return base + chosen


def pareto(candidates: Sequence[Candidate], speed: Callable[[Candidate], float] = lambda c: c.flop_ratio,
           ) -> list[Candidate]:
    """The candidates no other beats on both speed (``speed``) and metric (ties: the first kept)."""
    front = []
    for c in candidates:
        if not any((speed(o) >= speed(c) and o.metric >= c.metric) and (speed(o) > speed(c) or o.metric > c.metric)
                   for o in candidates):
            front.append(c)
    return front


def choose(timed: Sequence[Candidate], target: Target) -> tuple[Candidate | None, Candidate | None]:
    """(the choice, None) among the timed candidates (``speedup`` set), or (None, the closest) where none meets
    the target: the smallest drop with --max-drop, the highest measured speed-up with --speedup."""
    merging = [c for c in timed if c.kind != "baseline" and c.speedup is not None]
    if target.max_drop is not None:
        ok = [c for c in merging if c.drop <= target.max_drop + 1e-9]
        if ok:
            return max(ok, key=lambda c: (c.speedup, c.metric)), None
        return None, min(merging, key=lambda c: c.drop) if merging else None
    assert target.speedup is not None
    ok = [c for c in merging if c.speedup is not None and c.speedup >= target.speedup]
    if ok:
        return max(ok, key=lambda c: (c.metric, c.speedup)), None
    return None, max(merging, key=lambda c: c.speedup or 0.0) if merging else None


def bootstrap_drop(base: np.ndarray, candidate: np.ndarray, metric: Callable[[np.ndarray], float],
                   draws: np.ndarray) -> tuple[float, float]:
    """95 % interval of ``metric(base) - metric(candidate)`` in points, resampling clips (rows) as ``draws``
    (resamples x clips indices), paired: both sides see the same clips each draw."""
    drops = [100.0 * (metric(base[idx]) - metric(candidate[idx])) for idx in draws]
    finite = np.asarray([d for d in drops if np.isfinite(d)])
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def resample_indices(clips: int, seed: int, draws: int = BOOTSTRAP) -> np.ndarray:
    """(draws, clips) indices of clips drawn with replacement."""
    return np.random.default_rng([seed, 25]).integers(0, clips, size=(draws, clips))


def split_clips(first_labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(search, held-out) clip indices: ``fraction`` of each class's clips (by first label) held out, at least
    one of a class with two or more, chosen at random with ``seed``."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--holdout must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng([seed, 26])
    labels = np.asarray(first_labels)
    held = []
    for k in np.unique(labels):
        mine = rng.permutation(np.flatnonzero(labels == k))
        take = min(len(mine) - 1, max(1, round(fraction * len(mine)))) if len(mine) > 1 else 0
        held += list(mine[:take])
    held_set = set(int(i) for i in held)
    search = np.asarray([i for i in range(len(labels)) if i not in held_set], dtype=int)
    return search, np.asarray(sorted(held_set), dtype=int)
