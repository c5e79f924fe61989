"""The interleaved timing helper: order of calls, warm-up, and the figures it derives."""

from __future__ import annotations

import pytest

from fastast_deploy.errors import ConfigError
from fastast_deploy.evaluation.timing import summarise, time_interleaved


def test_rounds_alternate_and_rotate() -> None:
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timed = time_interleaved(runs, warmup=1, rounds=4)
    warm, timed_calls = calls[:3], calls[3:]
    assert warm == ["a", "b", "c"]
    # every round calls each run once, and the first run moves on by one each round
    rounds = [timed_calls[i : i + 3] for i in range(0, 12, 3)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert all(t.rounds == 4 for t in timed.values())


def test_figures_come_from_each_runs_own_calls() -> None:
    # A fake clock: run "slow" advances it by 3 s per call, "fast" by 1 s; medians and clips/s follow.
    now = [0.0]
    runs = {"slow": lambda: now.__setitem__(0, now[0] + 3.0), "fast": lambda: now.__setitem__(0, now[0] + 1.0)}
    timed = time_interleaved(runs, batch=6, warmup=0, rounds=5, clock=lambda: now[0])
    assert timed["slow"].latency_ms_p50 == pytest.approx(3000.0)
    assert timed["fast"].latency_ms_p50 == pytest.approx(1000.0)
    assert timed["slow"].clips_per_s == pytest.approx(2.0)
    assert timed["fast"].clips_per_s == pytest.approx(6.0)


def test_percentiles_by_hand() -> None:
    t = summarise([0.001 * v for v in range(1, 101)], batch=1)  # 1..100 ms
    assert t.latency_ms_p50 == pytest.approx(50.5)
    assert t.latency_ms_p90 == pytest.approx(90.1)
    assert t.latency_ms_p99 == pytest.approx(99.01)


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"warmup": -1}, {"batch": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        time_interleaved({"a": lambda: None}, **kwargs)
