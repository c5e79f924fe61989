"""bench (per-r table, JSON, plot, accuracy on labelled audio) and quickstart (the whole pipeline) on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.audio.features import load_batch
from fastast_deploy.audio.synthetic import make_classes
from fastast_deploy.checkpoints.native import load_model, save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule

CLASSES = make_classes(3, seed=5)
TINY = ModelConfig.from_size("tiny", depth=2, input_frames=128, num_labels=len(CLASSES))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    extra = {"task": "singlelabel", "dataset": {"kind": "synthetic", "classes": 3, "seed": 5, "seconds": 1.28}}
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                           label_names=[c.name for c in CLASSES], feature_config=FeatureConfig(frames=128),
                           extra=extra)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_bench_table_json_plot_and_accuracy(checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    t = np.arange(16000) / 16000
    for i, cls in enumerate(CLASSES):
        folder = data / cls.name.replace("/", "_")
        folder.mkdir(parents=True)
        sf.write(folder / "a.wav", (0.3 * np.sin(2 * np.pi * (300 + 500 * i) * t)).astype(np.float32), 16000)
    out = tmp_path / "bench"
    code, text = invoke("bench", str(checkpoint), "--tome-r", "0,8", "--rounds", "2", "--warmup", "0",
                        "--batch", "2", "--data", str(data), "-o", str(out))
    assert code == 0, text
    report = json.loads((out / "bench.json").read_text())
    rows = {row["r"]: row for row in report["rows"]}
    assert set(rows) == {0, 8}
    assert rows[0]["tokens_out"] == 146 and rows[8]["tokens_out"] == 130
    assert rows[0]["speedup"] == 1.0 and rows[8]["flop_ratio"] > 1
    assert report["data"] == {"task": "singlelabel", "metric": "accuracy", "clips": 3}
    # Accuracy of each engine equals the PyTorch model's at the same r on the same files, scored here.
    for r, row in rows.items():
        model = load_model(checkpoint, tome_r=r).eval()
        paths = sorted(data.glob("*/a.wav"))
        with torch.no_grad():
            predicted = model(load_batch(paths, model.feature_config)).argmax(dim=1).tolist()
        truth = [[c.name.replace("/", "_") for c in CLASSES].index(p.parent.name) for p in paths]
        assert row["accuracy"] == pytest.approx(np.mean(np.equal(predicted, truth)))
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in text.splitlines()[0]


def test_bench_fails_on_missing_files_as_evaluate_does(tmp_path: Path) -> None:
    from fastast_deploy.errors import DatasetError
    from fastast_deploy.evaluation.bench import labelled_data

    names = [c.name for c in CLASSES]
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n" + "".join(
        f"{i},{n},{n}\n" for i, n in enumerate(names)))
    sf.write(tmp_path / "here.wav", np.zeros(1600, np.float32), 16000)
    rows = [{"wav": "here.wav", "labels": names[0]}, {"wav": "gone.wav", "labels": names[1]}]
    (tmp_path / "data.json").write_text(json.dumps({"data": rows}))
    with pytest.raises(DatasetError, match=r"1 of 2 audio files .* are missing \(e\.g\. .*gone\.wav\)"):
        labelled_data(str(tmp_path / "data.json"), str(tmp_path / "labels.csv"), names)


def test_bench_rejects_repeated_r(checkpoint: Path, tmp_path: Path) -> None:
    code, text = invoke("bench", str(checkpoint), "--tome-r", "8,8", "-o", str(tmp_path / "b"))
    assert code == 1 and "lists a value twice" in text


def test_quickstart_runs_the_pipeline(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "qs"
    code, text = invoke("quickstart", "--source", str(checkpoint), "-o", str(out), "--backend", "onnxruntime",
                        "--clips-per-class", "2", "--iterations", "2")
    assert code == 0, text
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and report["inputs"]["clips"] == 6 and report["inputs"]["labelled"]
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert {"1", "8"} == set(report["speed"]["batches"])
    for name in ("model.onnx", "model.onnx.json", "model.ort.onnx", "model.ort.onnx.json"):
        assert (out / name).is_file()
    assert len(list((out / "clips").rglob("*.wav"))) == 6
    assert "summary" in text and "PASSED" in text and "speed-up" in text
