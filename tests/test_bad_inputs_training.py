"""Issue 23, training / checkpoint / make-dataset / option cases (items 2, 3, 5, 7, 9, 14, 15, 16, 17, 20): the exit
code, at most 3 lines and no traceback, inputs unchanged and no file or temp left. Commands run in-process (tiny
models, 1-epoch runs); a full disk is an OSError(ENOSPC) raised by the write."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from fastast_deploy.audio.synthetic import SyntheticConfig, make_synthetic
from fastast_deploy.checkpoints.cnn import save_cnn
from fastast_deploy.cli.main import cli
from fastast_deploy.model.cnn import CNNClassifier, CNNConfig

TINY_RUN = ["--depth", "2", "--frames", "64", "--epochs", "1", "--threads", "1", "--quiet"]


def invoke(args: list) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def assert_clean(code: int, output: str, want: int, fragment: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == want, output
    assert 1 <= len(lines) <= 3 and "Traceback" not in output, output
    assert fragment in output, output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic dataset, a finished 1-epoch run, and files that are not checkpoints."""
    root = tmp_path_factory.mktemp("world")
    data = root / "data"
    make_synthetic(data, SyntheticConfig(classes=3, clips_per_class=4, seconds=0.5))
    run = root / "run"
    code, output = invoke(["train", "--train", data / "train.json", "--val", data / "val.json", "--labels",
                           data / "labels.csv", "-o", run, *TINY_RUN])
    assert code == 0, output
    files = root / "files"
    files.mkdir()
    (files / "empty.pth").write_bytes(b"")
    (files / "text.pth").write_text("hello world\n")
    (files / "raw.pkl").write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    (files / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(64))
    sf.write(files / "tone.wav", np.zeros(1600, np.float32), 16000)
    save_cnn(CNNClassifier(CNNConfig(3, 64, 128, "compact", 8)), files / "cnn.safetensors", label_names=("a", "b", "c"))
    hf = files / "hf"
    hf.mkdir()
    save_file({"audio_spectrogram_transformer.embeddings.cls_token": torch.zeros(1, 1, 64),
               "classifier.dense.weight": torch.zeros(3, 64)}, hf / "model.safetensors")
    whole = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(whole[:-100])
    return {"root": root, "data": data, "run": run, "files": files}


def _train(world: dict[str, Path], out: str = "{root}/new") -> list[str]:
    d = world["data"]
    return ["train", "--train", f"{d}/train.json", "--val", f"{d}/val.json", "--labels", f"{d}/labels.csv", "-o", out,
            *TINY_RUN]


# (id, extra args after a tiny `train`, or a whole argv; exit code; fragment of the one-line error)
BAD = [
    ("7 frames unbounded", ["--frames", "1000000000"], 2, "1<=x<=200000"),
    ("7 device tpu", ["--device", "tpu"], 2, "cuda:N"),
    ("7 lr nan", ["--lr", "nan"], 2, "--lr"),
    ("7 lr inf", ["--lr", "inf"], 2, "--lr"),
    ("7 mixup nan", ["--mixup", "nan"], 2, "--mixup"),
    ("15 r list shorter than the blocks", ["--depth", "4", "--tome-r", "8,8"], 1, "one value per block"),
    ("15 r with an empty value", ["--tome-r", "8,,8,8"], 2, "empty value"),
    ("15 r with a trailing comma", ["--tome-r", "8,"], 2, "empty value"),
    ("16 kd-tau without a teacher", ["--kd-tau", "2"], 2, "needs --teacher"),
    ("16 kd-mode without a teacher", ["--kd-mode", "hard"], 2, "needs --teacher"),
    ("9 train onto the data folder", ["-o", "{data}"], 1, "not a training run's"),
    ("9 train into a data folder", ["--train", "{data}/audio", "-o", "{data}/audio/run"], 1, "lies inside"),
    ("9 make-dataset onto a dataset", ["make-dataset", "synthetic", "-o", "{data}", "--classes", "2"], 2,
     "--force"),
    ("2 resume a run without checkpoint", ["train", "-o", "{stuck}", "--resume"], 1, "same command without"),
    ("14 an onnx model", ["export", "{files}/model.onnx", "-o", "{root}/x.onnx"], 1, "is an ONNX model"),
    ("14 a wav", ["export", "{files}/tone.wav", "-o", "{root}/x.onnx"], 1, "is an audio file"),
    ("14 a raw pickle", ["export", "{files}/raw.pkl", "-o", "{root}/x.onnx"], 1, "torch.save did not write"),
    ("14 a text file", ["export", "{files}/text.pth", "-o", "{root}/x.onnx"], 1, "is a text file"),
    ("14 an empty file", ["export", "{files}/empty.pth", "-o", "{root}/x.onnx"], 1, "empty file"),
    ("14 a cut HF weights file", ["export", "{files}/hf/model.safetensors", "-o", "{root}/x.onnx"], 1,
     "cut short"),
    ("14 a CNN checkpoint to export", ["export", "{files}/cnn.safetensors", "-o", "{root}/x.onnx"], 1,
     "is a CNN checkpoint"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_fails_cleanly_and_changes_nothing(world: dict[str, Path], snapshot, case: tuple) -> None:
    _, argv, want, fragment = case
    stuck = world["root"] / "stuck"
    stuck.mkdir(exist_ok=True)
    (stuck / "config.json").write_text("{}")
    names = {k: str(v) for k, v in world.items()} | {"stuck": str(stuck)}
    args = [a.format(**names) for a in (argv if argv[0] in ("train", "export", "make-dataset") else
                                        _train(world) + argv)]
    before = snapshot(world["root"])
    code, output = invoke(args)
    assert_clean(code, output, want, fragment)
    assert snapshot(world["root"]) == before


DAMAGES = [  # (file, damage: new bytes from the old, or None to delete), item 3
    ("config.json", lambda b: b[:40]),
    ("config.json", lambda b: b"[1, 2]"),
    ("config.json", lambda b: json.dumps({**json.loads(b), "epochs": "ten"}).encode()),
    ("config.json", lambda b: b""),
    ("last-state.json", None),
    ("last-state.json", lambda b: b"\xff\xfe" + b),
    ("last-state.json", lambda b: b"[]"),
    ("last", lambda b: b[: len(b) // 2]),
    ("last", None),
    ("metrics.jsonl", lambda b: b"garbage\n"),
    ("last-state.safetensors", None),
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(DAMAGES)])
def test_resume_of_a_damaged_run_names_the_file(world: dict[str, Path], tmp_path: Path, snapshot,
                                                 damage: tuple) -> None:
    name, spoil = damage
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    if spoil is None:
        (run / name).unlink()
    else:
        (run / name).write_bytes(spoil((run / name).read_bytes()))
    before = snapshot(run)
    code, output = invoke(["train", "-o", run, "--resume", "--quiet"])
    assert_clean(code, output, 1, "cannot resume")
    assert name in output and ("start a new one" in output or "delete the damaged lines" in output), output
    assert snapshot(run) == before


def test_a_run_stopped_before_its_first_checkpoint_starts_anew(world: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # all that a run killed in its first epoch leaves
    code, output = invoke(_train(world, str(run)))
    assert code == 0 and "starting it anew" in output, output
    assert (run / "last").is_file() and json.loads((run / "config.json").read_text())["epochs"] == 1


def test_divergence_stops_at_the_first_non_finite_loss(world: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, output = invoke(_train(world, str(run)) + ["--lr", "1e10", "--warmup-epochs", "0"])
    assert code == 1 and "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    assert "training diverged" in last and "epoch 1" in last and "lower --lr" in last, output
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing saved; restartable (item 2)


def test_divergence_keeps_the_last_good_checkpoint(world: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import fastast_deploy.training.loop as loop

    run = tmp_path / "run"
    real = loop.cmkd_loss
    calls = []

    def loss_nan_in_epoch_2(*args: object, **kwargs: object):
        parts = real(*args, **kwargs)
        calls.append(1)
        return parts._replace(total=parts.total * float("nan")) if len(calls) > 1 else parts

    monkeypatch.setattr(loop, "cmkd_loss", loss_nan_in_epoch_2)
    code, output = invoke(_train(world, str(run)) + ["--epochs", "2", "--batch-size", "64"])
    assert code == 1 and "loss nan in epoch 2, step 2" in output and "(epoch 1) is kept" in output, output
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not list(run.glob(".*"))


def _full_disk(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_train_onto_a_full_disk(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastast_deploy.checkpoints.metadata as metadata

    monkeypatch.setattr(metadata, "save_file", _full_disk)
    run = tmp_path / "run"
    code, output = invoke(_train(world, str(run)))
    assert code == 1 and "Traceback" not in output, output
    assert "No space left on device" in output.strip().splitlines()[-1], output
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # no temp, no half checkpoint


def test_make_dataset_onto_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.write_bytes
    calls = []

    def fills_up(self: Path, data: bytes) -> int:
        calls.append(1)
        if len(calls) > 5:
            _full_disk()
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    code, output = invoke(["make-dataset", "synthetic", "-o", tmp_path / "d", "--classes", "2",
                           "--clips-per-class", "4", "--seconds", "0.2"])
    assert_clean(code, output, 1, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_make_dataset_force_replaces(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["make-dataset", "synthetic", "-o", out, "--classes", "2", "--clips-per-class", "2", "--seconds", "0.2"]
    assert invoke(args)[0] == 0
    (out / "train.json").unlink()  # dataset.json alone is refused too
    code, output = invoke(args)
    assert_clean(code, output, 2, "dataset.json")
    assert invoke([*args, "--force"])[0] == 0


def test_run_files_have_the_usual_mode(world: dict[str, Path]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in world["run"].iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_shipped_default_model_names_no_builder_path() -> None:
    from fastast_deploy.checkpoints.native import default_checkpoint

    head = default_checkpoint().read_bytes()[:100_000]
    assert b"/tmp/" not in head and b"/home/" not in head
