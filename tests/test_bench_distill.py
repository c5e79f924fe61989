"""The distillation benchmark's protocol: choices read the validation split only, figures come from the test split,
and the bootstrap interval is what a binomial says it should be."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_distill as bd  # noqa: E402

# Best val accuracy each fake candidate run reaches, and a test split that ranks them the other way round.
VAL = {"default": 0.30, "soft_t1_l05": 0.50, "hard_l05": 0.40}


class Opened:
    """Every file this process opens while ``on`` (an audit hook cannot be removed, so it is switched)."""

    def __init__(self) -> None:
        self.on, self.paths = False, []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.on and event == "open" and isinstance(args[0], (str, Path)):
            self.paths.append(str(args[0]))


OPENED = Opened()


def fake_cli(commands: list[tuple[str, ...]]):
    """A stand-in for the CLI: `train -o RUN` writes RUN/metrics.jsonl with the candidate's val accuracy (from the
    run's name) and RUN/best; every command is recorded."""

    def run(*args: str, log: Path | None = None) -> str:
        commands.append(args)
        if args[0] == "train":
            out = Path(args[args.index("-o") + 1])
            name = out.name.rsplit("_s", 1)[0].removeprefix("cand_")
            best = VAL.get("default" if name == "fastast_kd" else name, 0.2)
            out.mkdir(parents=True)
            rows = [{"epoch": 1, "val_acc": best / 2}, {"epoch": 2, "val_acc": best}, {"epoch": 3, "val_acc": 0.1}]
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (out / "best").write_bytes(b"")
        return ""

    return run


def one_at_a_time(work: Path, splits: bd.Splits):
    """The benchmark's run_all without a pool: each job through `train_run`, in order."""
    return lambda jobs: [bd.train_run(work, splits, name, args) for name, args in jobs]


def test_the_choice_reads_train_and_val_only_and_picks_the_best_validation_score(tmp_path: Path,
                                                                                monkeypatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name in ("train.json", "val.json", "test.json", "labels.csv"):
        (root / name).write_text("{}")
    commands: list[tuple[str, ...]] = []
    monkeypatch.setattr(bd, "cli", fake_cli(commands))
    settings = bd.Settings(seeds=(0, 1), choice_seeds=(0, 1), epochs=3, ft_epochs=1, teacher_epochs=1,
                           teacher_width=8, mel_bins=16, tome_r=1, candidates=tuple(VAL))
    splits, work = bd.Splits(root), tmp_path / "work"
    work.mkdir()
    run_all = one_at_a_time(work, splits)
    OPENED.paths.clear()
    OPENED.on = True
    try:
        teacher = bd.teacher_run(work, splits, settings)
        scores = bd.choice_runs(work, splits, settings, teacher, run_all)
        chosen = bd.choose(scores)
    finally:
        OPENED.on = False
    assert scores == {name: [value, value] for name, value in VAL.items()}  # each run's best epoch, not its last
    assert chosen == "soft_t1_l05"
    assert len(commands) == 1 + 2 * len(VAL)
    assert all(str(root / "val.json") in c and str(root / "train.json") in c for c in commands)
    assert not [c for c in commands if any(part.endswith("test.json") for part in c)]
    assert not [p for p in OPENED.paths if p.endswith("test.json")]

    # the same watch sees the scoring stage read the test split (so that the check above can fail)
    def hits(model: Path, splits: bd.Splits) -> np.ndarray:
        return np.asarray(json.loads(splits.test.read_text()).get("data", [1]), dtype=bool)

    monkeypatch.setattr(bd, "clip_hits", hits)
    OPENED.on = True
    try:
        bd.score_runs(splits, {("ast", 0): work / "fastast_kd_s0"})
    finally:
        OPENED.on = False
    assert [p for p in OPENED.paths if p.endswith("test.json")]


def test_choose_breaks_ties_toward_the_defaults() -> None:
    assert bd.choose({"default": [0.4, 0.2], "soft_t1_l05": [0.3, 0.3], "hard_l05": [0.1, 0.3]}) == "default"
    assert bd.choose({"default": [0.1], "hard_l05": [0.3], "soft_t1_l05": [0.3]}) == "hard_l05"


def test_the_interval_of_one_seed_is_the_binomial_one() -> None:
    """400 clips, half right, the same in every seed: the mean over seeds is 0.5 and the 95 % interval that of a
    binomial proportion, 0.5 +- 1.96 * sqrt(0.25 / 400) = [0.451, 0.549]."""
    rng = np.random.default_rng(3)
    row = rng.permutation(np.arange(400) < 200)
    mean, lo, hi = bd.interval([row, row, row])
    assert mean == 0.5
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)


def test_the_interval_widens_with_the_spread_of_the_seeds() -> None:
    """Two seeds, one right on every clip, one on none: the mean is 0.5, and a draw of the seeds alone can give 0
    or 1, so the interval spans [0, 1]."""
    mean, lo, hi = bd.interval([np.ones(50, bool), np.zeros(50, bool)])
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)


@pytest.mark.parametrize("pretrain_epochs", [0, 9])
def test_the_papers_regime_starts_from_the_stand_in_for_a_pretrained_ast(tmp_path: Path, monkeypatch,
                                                                          pretrain_epochs: int) -> None:
    """With --pretrain-epochs the fine-tuning and ToMe off the shelf start from the longer r = 0 run, trained with
    PRETRAIN for that many epochs; without, from the from-scratch ast run."""
    root = tmp_path / "data"
    root.mkdir()
    commands: list[tuple[str, ...]] = []
    monkeypatch.setattr(bd, "cli", fake_cli(commands))
    settings = bd.Settings(seeds=(0,), choice_seeds=(0,), epochs=3, ft_epochs=1, teacher_epochs=1, teacher_width=8,
                           mel_bins=16, tome_r=1, candidates=("default",), pretrain_epochs=pretrain_epochs)
    work = tmp_path / "work"
    work.mkdir()
    splits = bd.Splits(root)
    runs = bd.claim_runs(work, splits, settings, work / "teacher", one_at_a_time(work, splits))
    stand_in = work / ("pretrained_s0" if pretrain_epochs else "ast_s0")
    assert runs[("pretrained", 0)] == stand_in
    started = [c[c.index("--model") + 1] for c in commands if "--model" in c]
    assert started == [str(stand_in / "best")] * 2  # tome_ft and tome_ft_kd
    exports = [c for c in commands if c[0] == "export"]
    assert [c[1] for c in exports] == [str(stand_in / "best")]
    pretrain = [c for c in commands if c[0] == "train" and str(work / "pretrained_s0") in c]
    if pretrain_epochs:
        (args,) = pretrain
        assert args[args.index("--epochs") + 1] == "9" and "--tome-r" not in args
        assert all(part in args for part in bd.PRETRAIN)
    else:
        assert not pretrain


def test_the_cost_of_merging_is_read_against_the_stand_in() -> None:
    """Merging cost is the stand-in's accuracy less ToMe off the shelf; the fine-tuned FastAST must win back half."""
    figures = {kind: (0.5, 0.4, 0.6) for kind in bd.KINDS}
    figures.update(pretrained=(0.8, 0.7, 0.9), tome_shelf=(0.6, 0.5, 0.7), tome_ft_kd=(0.69, 0.6, 0.8))
    verdict = bd.claims(figures)
    (recovery,) = [v for k, v in verdict.items() if k.startswith("tome_ft_kd recovers")]
    assert recovery is False  # 9 of the 20 points lost
    figures["tome_ft_kd"] = (0.71, 0.6, 0.8)
    assert [v for k, v in bd.claims(figures).items() if k.startswith("tome_ft_kd recovers")] == [True]
    figures["tome_shelf"] = (0.8, 0.7, 0.9)  # nothing lost: nothing to recover
    assert [v for k, v in bd.claims(figures).items() if k.startswith("tome_ft_kd recovers")] == [None]
