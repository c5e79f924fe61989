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


def test_rewarm_runs_each_timed_call_untimed_first_and_keeps_it_out_of_the_figures() -> None:
    # A fake clock: "a" takes 1 s a call, "b" 4 s. With rewarm_s = 2.5, every timed call of "a" follows three
    # untimed calls of "a" (1 + 1 + 1 >= 2.5), of "b" one untimed call (4 >= 2.5); the figures are the timed calls.
    now, calls = [0.0], []

    def run(name: str, seconds: float) -> None:
        calls.append(name)
        now[0] += seconds

    runs = {"a": lambda: run("a", 1.0), "b": lambda: run("b", 4.0)}
    timed = time_interleaved(runs, warmup=0, rounds=2, rewarm_s=2.5, clock=lambda: now[0])
    assert "".join(calls) == "aaaa" "bb" "bb" "aaaa"  # round 2 starts with "b" (the order rotates)
    assert timed["a"].latency_ms_p50 == pytest.approx(1000.0) and timed["b"].latency_ms_p50 == pytest.approx(4000.0)


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"warmup": -1}, {"batch": 0}, {"rewarm_s": -1.0},
                                    {"rewarm_s": float("nan")}])
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        time_interleaved({"a": lambda: None}, **kwargs)


def test_tensorrt_engines_get_device_time_side_by_side() -> None:
    import numpy as np

    from fastast_deploy.engines.gpu import DeviceTiming
    from fastast_deploy.evaluation.verify import time_side_by_side

    calls: list[tuple[str, int, int]] = []

    class FakeTrt:  # the parts of TensorRTEngine that timing uses
        def __init__(self, name: str, compute_ms: float) -> None:
            self.name, self.compute_ms = name, compute_ms
            self.input_specs = {"fbank": (("batch", 16, 8), np.dtype("float32"))}
            self.metadata = {"export": {}}  # no feature settings recorded
            self.rewarm_s = 0.0

        def infer(self, feed: dict) -> dict:
            return {"logits": np.zeros((len(feed["fbank"]), 2), np.float32)}

        def time_device(self, feed: dict, warmup: int = 3, iterations: int = 20) -> DeviceTiming:
            calls.append((self.name, warmup, iterations))
            return DeviceTiming(0.5, self.compute_ms, self.compute_ms, 0.25, self.compute_ms + 0.75, 1, "fake")

    rows = time_side_by_side({"engine": FakeTrt("engine", 2.0), "baseline": FakeTrt("baseline", 3.0)}, batch=2,
                             warmup=1, rounds=3)
    assert [c[0] for c in calls] == ["engine", "baseline"] * 3  # alternating, one timed run per round
    assert [c[1] for c in calls] == [1, 1, 0, 0, 0, 0] and all(c[2] == 1 for c in calls)
    assert rows["engine"]["device"]["compute_ms"] == 2.0 and rows["baseline"]["device"]["latency_ms"] == 3.75
    assert rows["engine"]["clips_per_s"] > 0  # wall clock stays beside it
