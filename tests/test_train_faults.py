"""A training run killed at each step of saving an epoch resumes exactly; one run directory takes one training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fastast_deploy.audio.synthetic import SyntheticConfig, make_synthetic
from fastast_deploy.cli.main import cli
from fastast_deploy.pairs import JOURNAL
from fastast_deploy.training.config import TrainConfig
from fastast_deploy.training.loop import train

QUIET = {"log": lambda _: None, "progress": False}

KILLED_TRAIN = """
import json, os, sys
import fastast_deploy.pairs as pairs
from fastast_deploy.training.config import TrainConfig
from fastast_deploy.training.loop import train
step, config = sys.argv[1], json.loads(sys.argv[2])
seen = []
def hook(name):
    seen.append(name)
    if seen.count(step) == 2:  # while the second epoch is being saved
        os._exit(9)
pairs._after_step = hook
train(TrainConfig(**config), log=lambda _: None, progress=False)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    data = tmp_path_factory.mktemp("data")
    make_synthetic(data, SyntheticConfig(classes=3, clips_per_class=6, seconds=0.5, val_fraction=0.25))
    return TrainConfig(train=str(data / "train.json"), val=str(data / "val.json"), labels=str(data / "labels.csv"),
                       depth=2, tome_r=4, epochs=3, batch_size=5, mixup=0.5, seed=3, threads=1)


def lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(base: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("whole") / "run"
    train(TrainConfig(**{**base.to_dict(), "output": str(run)}), **QUIET)
    return run


@pytest.mark.parametrize("step", ["staged", "journal", "first"])
def test_killed_while_saving_resumes_exactly(base: TrainConfig, whole: Path, tmp_path: Path, step: str) -> None:
    run = tmp_path / "run"
    config = json.dumps({**base.to_dict(), "output": str(run)})
    killed = subprocess.run([sys.executable, "-c", KILLED_TRAIN, step, config], capture_output=True, timeout=600)
    assert killed.returncode == 9, killed.stderr.decode()[-2000:]
    assert (run / JOURNAL).exists() == (step in ("journal", "first"))  # a commit was cut there
    train(TrainConfig(output=str(run), threads=base.threads), resume=True, **QUIET)  # as the run: bit-exact
    assert not (run / JOURNAL).exists() and not list(run.glob(".*.staged"))
    want, got = load_file(whole / "last"), load_file(run / "last")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert [(r["epoch"], r["loss"]) for r in lines(run)] == [(r["epoch"], r["loss"]) for r in lines(whole)]


def test_one_training_per_run_directory(base: TrainConfig, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = {**base.to_dict(), "output": str(run), "epochs": 6}
    first = subprocess.Popen([sys.executable, "-c", KILLED_TRAIN, "never", json.dumps(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / "config.json").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run / "config.json").exists()
    data = base.to_dict()
    result = CliRunner().invoke(cli, ["train", "--train", data["train"], "--val", data["val"], "--labels",
                                      data["labels"], "-o", str(run), "--epochs", "1", "--quiet"])
    assert result.exit_code != 0 and "in use by another train" in result.output, result.output
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-2000:]
    assert [r["epoch"] for r in lines(run)] == list(range(1, 7))  # the first run's metrics alone


def test_a_library_call_leaves_the_thread_count(base: TrainConfig, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    train(TrainConfig(**{**base.to_dict(), "output": str(tmp_path / "run"), "epochs": 1, "threads": threads}),
          **QUIET)
    assert torch.get_num_threads() == before
    assert json.loads((tmp_path / "run" / "config.json").read_text())["threads"] == threads


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "config.json cut": ("config.json", _cut, "is not valid JSON"),
    "config.json not settings": ("config.json", lambda p: p.write_text('{"epochs": "many"}'), "invalid"),
    "last-state.json garbage": ("last-state.json", lambda p: p.write_bytes(b"\xff\xfe\x00garbage\x9c"),
                                "is not valid JSON"),
    "last-state.json a list": ("last-state.json", lambda p: p.write_text("[1, 2]"), "expected an object"),
    "metrics.jsonl cut line": ("metrics.jsonl", lambda p: p.write_text(p.read_text()[:-20]), "line 3"),
    "last cut": ("last", _cut, "damaged FastAST checkpoint"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_run_files_are_one_line_errors(whole: Path, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    name, spoil, why = DAMAGES[damage]
    spoil(run / name)
    result = CliRunner().invoke(cli, ["train", "-o", str(run), "--resume", "--quiet"])
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output  # refused before any preparation
    assert "cannot resume" in lines[0] or "damaged" in lines[0], lines[0]
    assert name in lines[0] and why in lines[0], lines[0]
