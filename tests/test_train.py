"""Training: CMKD losses against their formulas, the schedule and augmentations, CNN teacher -> FastAST student with
ToMe in the loop, export of the student, exact resume, and bad input refused before training starts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fastast_deploy.audio.features import load_batch
from fastast_deploy.audio.labels import read_label_csv
from fastast_deploy.audio.synthetic import SyntheticConfig, make_synthetic
from fastast_deploy.checkpoints.cnn import save_cnn
from fastast_deploy.checkpoints.loading import load_any
from fastast_deploy.checkpoints.native import load_model, save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.engines.onnx_model import read_onnx_model
from fastast_deploy.errors import ConfigError
from fastast_deploy.model.cnn import CNNClassifier, CNNConfig
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.training.cmkd import TokenHeads, cmkd_loss, kd_loss, task_loss, teacher_targets
from fastast_deploy.training.config import TrainConfig
from fastast_deploy.training.loop import lr_factor, mixup, spec_augment, train

STUDENT = ("--depth", "2", "--tome-r", "4", "--epochs", "2", "--batch-size", "6", "--quiet")
TEACHER = ("--arch", "compact-cnn", "--cnn-width", "8", "--epochs", "2", "--batch-size", "6", "--quiet")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, SyntheticConfig(classes=3, clips_per_class=8, seconds=0.5, val_fraction=0.25))
    return root


def data_args(data: Path) -> tuple[str, ...]:
    return ("--train", str(data / "train.json"), "--val", str(data / "val.json"), "--labels", str(data / "labels.csv"))


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    code, output = run("train", *data_args(data), "-o", str(out), *TEACHER)
    assert code == 0, output
    return out


# ---- losses, by their formulas -----------------------------------------------------------------------------------

S = [[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]]
T = [[1.5, 0.0, -1.0], [-0.5, 2.5, 0.5]]


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _bce(logit: float, target: float) -> float:
    p = _sigmoid(logit)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_multilabel_losses_match_their_formulas() -> None:
    y = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    lam, tau = 0.3, 2.0
    task = sum(_bce(s, t) for rs, ry in zip(S, y, strict=True) for s, t in zip(rs, ry, strict=True)) / 6
    kd = sum(_bce(s / tau, _sigmoid(t / tau)) for rs, rt in zip(S, T, strict=True)
             for s, t in zip(rs, rt, strict=True)) / 6
    s, t, yt = torch.tensor(S), torch.tensor(T), torch.tensor(y)
    assert float(task_loss(s, yt, "multilabel")) == pytest.approx(task, rel=1e-6)
    assert float(kd_loss(s, t, "multilabel", tau)) == pytest.approx(kd, rel=1e-6)
    parts = cmkd_loss(s, yt, teacher_targets(t, "multilabel", tau), "multilabel", lam, tau)
    assert float(parts.total) == pytest.approx(lam * task + (1 - lam) * kd, rel=1e-6)


def test_singlelabel_losses_match_their_formulas() -> None:
    labels = [2, 0]
    lam, tau = 0.1, 3.0
    ce = sum(-math.log(_softmax(row)[k]) for row, k in zip(S, labels, strict=True)) / 2
    kl = 0.0
    for rs, rt in zip(S, T, strict=True):
        p, q = _softmax([v / tau for v in rt]), _softmax([v / tau for v in rs])
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    kl = kl / 2 * tau**2
    s, t = torch.tensor(S), torch.tensor(T)
    y = torch.eye(3)[labels]
    assert float(task_loss(s, y, "singlelabel")) == pytest.approx(ce, rel=1e-6)
    assert float(kd_loss(s, t, "singlelabel", tau)) == pytest.approx(kl, rel=1e-6)
    parts = cmkd_loss(s, y, teacher_targets(t, "singlelabel", tau), "singlelabel", lam, tau)
    assert float(parts.total) == pytest.approx(lam * ce + (1 - lam) * kl, rel=1e-6)
    assert float(kd_loss(t, t, "singlelabel", tau)) == pytest.approx(0.0, abs=1e-7)  # KL of a distribution to itself
    no_teacher = cmkd_loss(s, y, None, "singlelabel", lam, tau)
    assert no_teacher.kd is None and float(no_teacher.total) == pytest.approx(ce, rel=1e-6)


def test_standardised_kd_matches_its_formula_and_ignores_the_logit_scale() -> None:
    """--kd-standardize: each row z-scored (population std) before tau, for the teacher and the student alike."""
    tau = 2.0

    def z(row: list[float]) -> list[float]:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / len(row))
        return [(v - mean) / std / tau for v in row]

    kl = 0.0
    for rs, rt in zip(S, T, strict=True):
        p, q = _softmax(z(rt)), _softmax(z(rs))
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    kl = kl / 2 * tau**2
    s, t = torch.tensor(S), torch.tensor(T)
    targets = teacher_targets(t, "singlelabel", tau, "soft", standardize=True)
    assert targets[0].tolist() == pytest.approx(_softmax(z(T[0])), rel=1e-5)
    parts = cmkd_loss(s, torch.eye(3)[[2, 0]], targets, "singlelabel", 0.0, tau, standardize=True)
    assert float(parts.kd) == pytest.approx(kl, rel=1e-5)
    # a student whose logits are the teacher's scaled and shifted matches it exactly; unstandardised it would not
    student = 7.0 * t + 3.0
    assert float(cmkd_loss(student, targets, targets, "singlelabel", 0.0, tau, standardize=True).kd) == (
        pytest.approx(0.0, abs=1e-5))
    assert float(kd_loss(student, t, "singlelabel", tau)) > 0.1
    # a weak teacher (logits 10x smaller) gives the same targets as a confident one
    assert torch.allclose(teacher_targets(t / 10, "singlelabel", tau, "soft", standardize=True), targets, atol=1e-5)


C = [[1.0, 0.5, -0.5], [0.2, -0.3, 0.9]]  # cls-token logits
D = [[-1.0, 2.0, 0.0], [0.4, 0.1, -2.0]]  # dist-token logits


def _ce(row: list[float], k: int) -> float:
    return -math.log(_softmax(row)[k])


def _kl(teacher: list[float], student: list[float], tau: float) -> float:
    p, q = _softmax([v / tau for v in teacher]), _softmax([v / tau for v in student])
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)) * tau**2


def test_singlelabel_kd_modes_match_hand_computed_values() -> None:
    labels, lam, tau = [2, 0], 0.25, 2.0
    hard = [max(range(3), key=row.__getitem__) for row in T]  # the teacher's decisions: [0, 1]
    assert hard == [0, 1]
    expected = {
        "soft": [lam * _ce(s, k) + (1 - lam) * _kl(t, s, tau) for s, t, k in zip(S, T, labels, strict=True)],
        "hard": [lam * _ce(s, k) + (1 - lam) * _ce(s, h) for s, h, k in zip(S, hard, labels, strict=True)],
        "deit-soft": [lam * _ce(c, k) + (1 - lam) * _kl(t, d, tau)
                      for c, d, t, k in zip(C, D, T, labels, strict=True)],
        "deit-hard": [lam * _ce(c, k) + (1 - lam) * _ce(d, h) for c, d, h, k in zip(C, D, hard, labels, strict=True)],
    }
    s, t, y = torch.tensor(S), torch.tensor(T), torch.eye(3)[labels]
    tokens = (torch.tensor(C), torch.tensor(D))
    for mode, per_clip in expected.items():
        kd = teacher_targets(t, "singlelabel", tau, mode)
        parts = cmkd_loss(s, y, kd, "singlelabel", lam, tau, mode, tokens)
        assert float(parts.total) == pytest.approx(sum(per_clip) / 2, rel=1e-6), mode
    # hard targets are one-hot whatever the temperature
    assert torch.equal(teacher_targets(t, "singlelabel", 7.0, "deit-hard"), torch.eye(3)[hard])
    with pytest.raises(ConfigError, match="distillation token"):
        cmkd_loss(s, y, t.softmax(-1), "singlelabel", lam, tau, "deit-soft", None)


def test_multilabel_kd_modes_match_hand_computed_values() -> None:
    y = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    lam, tau = 0.4, 2.0
    hard = [[1.0 if v > 0 else 0.0 for v in row] for row in T]  # sigmoid(teacher) > 0.5

    def mean_bce(logits: list[list[float]], targets: list[list[float]], scale: float = 1.0) -> float:
        return sum(_bce(a / scale, b) for ra, rb in zip(logits, targets, strict=True)
                   for a, b in zip(ra, rb, strict=True)) / 6

    soft_t = [[_sigmoid(v / tau) for v in row] for row in T]
    expected = {
        "soft": lam * mean_bce(S, y) + (1 - lam) * mean_bce(S, soft_t, tau),
        "hard": lam * mean_bce(S, y) + (1 - lam) * mean_bce(S, hard),
        "deit-soft": lam * mean_bce(C, y) + (1 - lam) * mean_bce(D, soft_t, tau),
        "deit-hard": lam * mean_bce(C, y) + (1 - lam) * mean_bce(D, hard),
    }
    s, t, yt = torch.tensor(S), torch.tensor(T), torch.tensor(y)
    for mode, value in expected.items():
        parts = cmkd_loss(s, yt, teacher_targets(t, "multilabel", tau, mode), "multilabel", lam, tau, mode,
                          (torch.tensor(C), torch.tensor(D)))
        assert float(parts.total) == pytest.approx(value, rel=1e-6), mode


def test_token_heads_read_the_cls_and_dist_tokens_apart() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_size("tiny", depth=2, input_frames=48, num_mel_bins=32, num_labels=4),
                        TomeConfig((3, 3)))
    x = torch.randn(2, 48, 32)
    out = TokenHeads(model)(x)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[:, 0], model(x))  # the pooled output is the model's own
    # cls and dist alone, by hand: run the blocks, then the head on each token
    h, size = model.embed(x), None
    for block in model.blocks:
        h, size, _ = block(h, size)
    h = model.norm(h)
    torch.testing.assert_close(out[:, 1], model.head(model.head_norm(h[:, 0])))
    torch.testing.assert_close(out[:, 2], model.head(model.head_norm(h[:, 1])))
    assert not torch.allclose(out[:, 1], out[:, 2])


def test_recipes_fill_what_is_not_given() -> None:
    from fastast_deploy.training.config import RECIPES

    new = TrainConfig().resolved()
    assert (new.lr, new.warmup_epochs, new.epochs) == (RECIPES["scratch"].lr, RECIPES["scratch"].warmup_epochs,
                                                        RECIPES["scratch"].epochs)
    cnn = TrainConfig(arch="compact-cnn", lr=0.01).resolved()
    assert cnn.lr == 0.01 and cnn.epochs == RECIPES["cnn"].epochs
    tuned = TrainConfig(model="some/checkpoint.safetensors").resolved()
    assert tuned.lr == RECIPES["finetune"].lr
    assert TrainConfig(teacher_logits="t.npz").resolved().teacher_inputs == "clean"
    from fastast_deploy.training.config import KD_RECIPES

    for mode, kd in KD_RECIPES.items():  # the KD weight and temperature follow the mode unless given
        arch = "fastast" if mode.startswith("deit") else "compact-cnn"
        got = TrainConfig(arch=arch, kd_mode=mode, teacher="t").resolved()
        assert (got.kd_lambda, got.kd_tau) == (kd.kd_lambda, kd.kd_tau)
    auto = TrainConfig(teacher="t").resolved()
    assert (auto.kd_mode, auto.kd_lambda, auto.kd_tau, auto.kd_standardize) == ("soft", 0.5, 1.0, True)
    assert TrainConfig(teacher="t", kd_mode="hard").resolved().kd_standardize is False
    # a run saved before --kd-standardize existed resumes as it started, on raw logits
    saved = TrainConfig(teacher="t").to_dict()
    del saved["kd_standardize"]
    assert TrainConfig.from_dict(saved).resolved().kd_standardize is False
    assert TrainConfig.from_dict(TrainConfig(teacher="t").resolved().to_dict()).resolved().kd_standardize is True
    given = TrainConfig(teacher="t", kd_lambda=0.7, kd_tau=2.0).resolved()
    assert (given.kd_lambda, given.kd_tau) == (0.7, 2.0)
    assert TrainConfig(teacher="t").resolved().teacher_inputs == "augmented"
    with pytest.raises(ConfigError, match="--teacher-inputs clean"):
        TrainConfig(teacher_logits="t.npz", teacher_inputs="augmented")


def test_warm_up_is_the_recipes_share_of_the_run_and_a_short_run_says_so() -> None:
    # the recipes, by hand: a new FastAST warms up 2 of 70 epochs, fine-tuning 1 of 10, a CNN 1 of 20
    for config, full, warmup in ((TrainConfig(), 70, 2.0), (TrainConfig(model="m.safetensors"), 10, 1.0),
                                 (TrainConfig(arch="compact-cnn"), 20, 1.0)):
        assert config.resolved().warmup_epochs == warmup and config.resolved().short_run_note() is None
        for epochs in (3, full // 2, 2 * full):
            got = replace(config, epochs=epochs).resolved()
            assert got.warmup_epochs == pytest.approx(warmup * epochs / full)
    assert replace(TrainConfig(), epochs=3, warmup_epochs=2.0).resolved().warmup_epochs == 2.0  # given: kept
    short = replace(TrainConfig(), epochs=3).resolved().short_run_note()
    assert short is not None and "3 epochs is a short run for a new FastAST" in short and "measured at 70" in short
    assert replace(TrainConfig(), epochs=17).resolved().short_run_note() is not None  # below a quarter of 70
    assert replace(TrainConfig(), epochs=18).resolved().short_run_note() is None
    assert replace(TrainConfig(arch="compact-cnn"), epochs=4).resolved().short_run_note() is not None


def test_lr_warms_up_then_decays_to_zero() -> None:
    assert [lr_factor(s, 10, 2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, 10, 2) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(10, 10, 2) == pytest.approx(0.0)


def _stripe(mask: torch.Tensor) -> int:
    """Width of the one contiguous run of True in a 1-D mask (0 if none); fails on two runs."""
    where = torch.nonzero(mask).flatten().tolist()
    assert where == list(range(where[0], where[0] + len(where))) if where else True, where
    return len(where)


def test_spec_augment_and_mixup() -> None:
    x = torch.ones(64, 20, 10)
    masked = spec_augment(x, 3, 5, np.random.default_rng(0))
    widths = []
    for clip in masked:
        rows, cols = (clip == 0).all(dim=1), (clip == 0).all(dim=0)  # fully masked frames, fully masked mel bins
        # Nothing is zeroed but one stripe of frames and one of mel bins; the rest is untouched.
        assert torch.equal(clip == 0, rows[:, None] | cols[None, :])
        assert torch.equal(clip[clip != 0], torch.ones(int((clip != 0).sum())))
        widths.append((_stripe(rows), _stripe(cols)))
    time_widths, freq_widths = {t for t, _ in widths}, {f for _, f in widths}
    assert max(time_widths) == 5 and max(freq_widths) == 3  # masks reach the widths asked for
    assert len(time_widths) > 2 and len(freq_widths) > 2  # and vary from clip to clip
    assert torch.equal(spec_augment(x, 0, 0, np.random.default_rng(0)), x)
    y = torch.eye(4)
    same, (ys,) = mixup(x, [y], 0.0, 10.0, np.random.default_rng(0))
    assert torch.equal(same, x) and torch.equal(ys, y)
    xs = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    mixed, (ym,) = mixup(xs, [y], 1.0, 10.0, np.random.default_rng(0))
    torch.testing.assert_close(ym.sum(dim=1), torch.ones(4))  # still a distribution
    torch.testing.assert_close(mixed[:, 0, 0], ym @ torch.arange(4.0))  # inputs mixed with the same weights


# ---- end to end ----------------------------------------------------------------------------------------------------


def test_cnn_teacher_run(teacher_run: Path, data: Path) -> None:
    rows = metrics(teacher_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    teacher = load_any(teacher_run)  # a run directory stands for its best checkpoint
    labels = read_label_csv(data / "labels.csv")
    assert teacher.label_names == labels.names
    # The best epoch's val_acc is the accuracy of the saved teacher, scored here on the val list from the files.
    val = json.loads((data / "val.json").read_text())["data"]
    x = load_batch([data / row["wav"] for row in val], teacher.feature_config)
    with torch.no_grad():
        predicted = teacher.eval()(x).argmax(dim=1).tolist()
    truth = [labels.lookup()[row["labels"]] for row in val]
    assert max(r["val_acc"] for r in rows) == pytest.approx(np.mean(np.equal(predicted, truth)))
    assert teacher.feature_config.frames == 48  # 0.5 s clips: 1 + (8000 - 400) // 160


def test_student_distils_from_teacher_and_exports(teacher_run: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    code, output = run("train", *data_args(data), "-o", str(out), "--teacher", str(teacher_run), "--kd-lambda",
                       "0.5", "--kd-standardize", *STUDENT)
    assert code == 0, output
    start = output.index("note: 2 epochs is a short run for a new FastAST")  # said at the start, before epoch 1
    assert start < output.index("epoch 1/2") and "warm-up here 0.057 epochs" in output
    assert "--kd-lambda 0.5, --kd-tau " in output and ", standardised logits, teacher on the augmented" in output
    rows = metrics(out)
    assert len(rows) == 2 and all("val_acc" in r and r["kd_loss"] > 0 for r in rows)
    with np.load(out / "teacher_logits.npz") as npz:
        assert npz["logits"].shape == (18, 3) and len(npz["clips"]) == 18
    model = load_model(out / "best")
    assert model.schedule == (4, 4) and model.config.depth == 2
    labels = read_label_csv(data / "labels.csv").names
    assert model.label_names == labels
    code, output = run("export", str(out / "best"), "-o", str(tmp_path / "student.onnx"))
    assert code == 0, output
    meta = read_onnx_model(tmp_path / "student.onnx").metadata
    assert meta["labels"] == list(labels)
    assert meta["tome"]["schedule"] == [4, 4] and meta["tome"]["token_counts"] == [50, 46, 42]
    assert meta["features"]["frames"] == 48 and meta["features"]["mean"] == pytest.approx(model.feature_config.mean)
    # That FastAST run teaches in turn, on its own features (128 mel bins) for a 64-bin student.
    code, output = run("train", *data_args(data), "-o", str(tmp_path / "second"), "--teacher", str(out),
                       "--mel-bins", "64", "--teacher-inputs", "clean", *STUDENT)
    assert code == 0, output
    assert f"teacher {out}: val_acc" in output and load_model(tmp_path / "second" / "best").config.num_mel_bins == 64


def test_threads_and_the_online_teacher(teacher_run: Path, data: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = tmp_path / "deit"
        code, output = run("train", *data_args(data), "-o", str(out), "--teacher", str(teacher_run), "--threads", "1",
                           "--kd-mode", "deit-soft", *STUDENT, "--stop-after", "1")
        assert code == 0, output
        assert torch.get_num_threads() == 2  # --threads 1 held for the run only: the caller's count returns
        assert ("--kd-mode deit-soft, --kd-lambda 0.5, --kd-tau 1, standardised logits, teacher on the augmented "
                "batches") in output
        assert json.loads((out / "config.json").read_text())["threads"] == 1
        assert metrics(out)[0]["kd_loss"] > 0
    finally:
        torch.set_num_threads(before)
    # --arch cnn says which network it built
    code, output = run("train", *data_args(data), "-o", str(tmp_path / "which"), "--arch", "cnn", "--cnn-width", "4",
                       "--epochs", "1", "--batch-size", "6", "--quiet")
    assert code == 0, output
    assert ("compact CNN (--arch cnn: timm is not installed" in output) != ("EfficientNet-B2 (timm" in output), output
    # A CNN student has no distillation token.
    code, output = run("train", *data_args(data), "-o", str(tmp_path / "cnn"), "--teacher", str(teacher_run),
                       "--kd-mode", "deit-hard", *TEACHER)
    assert_one_line_failure(code, output, "distillation token", "--kd-mode soft or hard")


def test_precomputed_teacher_logits(teacher_run: Path, data: Path, tmp_path: Path) -> None:
    # The logits an online run saved are a valid --teacher-logits file, and give the same first epoch.
    online, offline = tmp_path / "online", tmp_path / "offline"
    args = (*data_args(data), *STUDENT, "--stop-after", "1", "--teacher-inputs", "clean")
    assert run("train", *args, "-o", str(online), "--teacher", str(teacher_run))[0] == 0
    code, output = run("train", *args, "-o", str(offline), "--teacher-logits", str(online / "teacher_logits.npz"))
    assert code == 0, output
    assert metrics(offline)[0]["kd_loss"] == metrics(online)[0]["kd_loss"]
    a, b = load_file(online / "last"), load_file(offline / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(data: Path, tmp_path: Path) -> None:
    base = TrainConfig(train=str(data / "train.json"), val=str(data / "val.json"), labels=str(data / "labels.csv"),
                       depth=2, tome_r=4, epochs=3, batch_size=5, mixup=0.5, seed=3)
    quiet = {"log": lambda _: None, "progress": False}
    train(TrainConfig(**{**base.to_dict(), "output": str(tmp_path / "whole")}), **quiet)
    train(TrainConfig(**{**base.to_dict(), "output": str(tmp_path / "split"), "stop_after": 1}), **quiet)
    assert len(metrics(tmp_path / "split")) == 1
    train(TrainConfig(output=str(tmp_path / "split")), resume=True, **quiet)
    whole, split = load_file(tmp_path / "whole" / "last"), load_file(tmp_path / "split" / "last")
    assert whole.keys() == split.keys()
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=0, atol=1e-6)
    assert [r["val_acc"] for r in metrics(tmp_path / "split")] == [r["val_acc"] for r in metrics(tmp_path / "whole")]
    assert [r["loss"] for r in metrics(tmp_path / "split")] == [r["loss"] for r in metrics(tmp_path / "whole")]
    # Not trivially equal: another seed trains to other weights.
    train(TrainConfig(**{**base.to_dict(), "output": str(tmp_path / "seed4"), "seed": 4}), **quiet)
    other = load_file(tmp_path / "seed4" / "last")
    assert not torch.equal(other["head.weight"], whole["head.weight"])


def test_resume_refuses_new_settings_naming_the_flags_given(data: Path, tmp_path: Path) -> None:
    code, output = run("train", *data_args(data), "-o", str(tmp_path / "run"), "--resume", "--epochs", "3")
    assert code != 0 and "Traceback" not in output
    assert "drop --train, --val, --labels, --epochs " in output, output


def test_multilabel_data_trains_with_map(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "data", SyntheticConfig(classes=4, clips_per_class=5, seconds=0.3, max_events=2))
    code, output = run("train", *data_args(tmp_path / "data"), "-o", str(tmp_path / "run"), *STUDENT)
    assert code == 0, output
    assert "multilabel" in output
    rows = metrics(tmp_path / "run")
    assert all(0 < r["val_map"] <= 1 and "val_acc" not in r for r in rows)


def test_finetune_a_checkpoint_with_other_labels(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig.from_size("tiny", depth=2, input_frames=48, num_labels=5)
    source = build_model(config, TomeConfig((6, 6)))
    save_checkpoint(source, tmp_path / "src.safetensors", label_names=list("abcde"))
    out = tmp_path / "run"
    code, output = run("train", *data_args(data), "-o", str(out), "--model", str(tmp_path / "src.safetensors"),
                       "--epochs", "1", "--batch-size", "6", "--lr", "1e-9", "--quiet")
    assert code == 0, output
    model = load_model(out / "best")
    assert model.config.num_labels == 3 and model.schedule == (6, 6)  # new head, the checkpoint's ToMe schedule
    # With a vanishing learning rate the body is still the checkpoint's.
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight, atol=1e-6,
                               rtol=0)


# ---- refused before training -------------------------------------------------------------------------------------


def assert_one_line_failure(code: int, output: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), output
    for fragment in fragments:
        assert fragment in lines[-1], output


def test_bad_input_fails_before_training(data: Path, teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    short = tmp_path / "labels.csv"
    short.write_text("".join((data / "labels.csv").read_text().splitlines(keepends=True)[:3]))
    code, output = run("train", "--train", str(data / "train.json"), "--val", str(data / "val.json"), "--labels",
                       str(short), "-o", str(out), *STUDENT)
    assert_one_line_failure(code, output, "labels used in", "missing from the label set of 2 labels", "synth_002")

    rows = json.loads((data / "train.json").read_text())["data"]
    rows = [{**r, "wav": str(data / r["wav"])} for r in rows]
    rows[0]["wav"], rows[5]["wav"] = str(tmp_path / "a.wav"), str(tmp_path / "b.wav")
    (tmp_path / "missing.json").write_text(json.dumps({"data": rows}))
    code, output = run("train", "--train", str(tmp_path / "missing.json"), "--val", str(data / "val.json"),
                       "--labels", str(data / "labels.csv"), "-o", str(out), *STUDENT)
    assert_one_line_failure(code, output, "2 of 18 audio files", "missing", "--skip-missing")

    other = tmp_path / "other"
    make_synthetic(other, SyntheticConfig(classes=4, clips_per_class=3, seconds=0.3))
    assert run("train", *data_args(other), "-o", str(tmp_path / "t4"), *TEACHER)[0] == 0
    code, output = run("train", *data_args(data), "-o", str(out), "--teacher", str(tmp_path / "t4"), *STUDENT)
    assert_one_line_failure(code, output, "teacher", "has 4 labels", "the dataset has 3")

    renamed = CNNClassifier(CNNConfig(num_labels=3, input_frames=48, num_mel_bins=128, width=4))
    save_cnn(renamed, tmp_path / "renamed.safetensors", label_names=["x", "y", "z"])
    code, output = run("train", *data_args(data), "-o", str(out), "--teacher", str(tmp_path / "renamed.safetensors"),
                       *STUDENT)
    assert_one_line_failure(code, output, "has other labels than the dataset", "#0: 'x' vs")

    np.savez(tmp_path / "wide.npz", logits=np.zeros((18, 4), np.float32))
    code, output = run("train", *data_args(data), "-o", str(out), "--teacher-logits", str(tmp_path / "wide.npz"),
                       *STUDENT)
    assert_one_line_failure(code, output, "shape (18, 4)", "expected (clips, 3)")
    assert not out.exists()  # nothing written by a refused run


def test_run_directory_guards(teacher_run: Path, data: Path, tmp_path: Path) -> None:
    code, output = run("train", *data_args(data), "-o", str(teacher_run), *TEACHER)
    assert_one_line_failure(code, output, "already holds a run", "--resume")
    code, output = run("train", "-o", str(teacher_run), "--resume", "--lr", "0.1")
    assert_one_line_failure(code, output, "drop --lr")
    code, output = run("train", "-o", str(tmp_path / "empty"), "--resume")
    assert_one_line_failure(code, output, "cannot resume")
    code, output = run("make-dataset", "synthetic", "-o", str(data))
    assert_one_line_failure(code, output, "already holds a dataset")


# ---- DDP -------------------------------------------------------------------------------------------------------------


def test_ddp_on_two_cpu_processes(data: Path, tmp_path: Path) -> None:
    """torchrun with two gloo processes: the run finishes and rank 0 alone writes it."""
    out = tmp_path / "ddp"
    script = Path(sys.executable).parent / "fastast-deploy"
    if not script.is_file():
        pytest.skip(f"no fastast-deploy script beside {sys.executable}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
           str(script), "train", *data_args(data), "-o", str(out), *STUDENT]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r["epoch"] for r in metrics(out)] == [1, 2]
    assert result.stdout.count("epoch 1/2") == 1  # one process reports
    assert load_model(out / "best").schedule == (4, 4)
