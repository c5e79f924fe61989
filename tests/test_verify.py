"""verify: parity and speed of engines against checkpoints, saved outputs and Polygraphy results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.metrics import compare_logits
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=3, input_frames=128, num_labels=4)
LABELS = ("tone", "chirp", "noise", "clicks")


def make_checkpoint(path: Path, labels: tuple[str, ...] = LABELS) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    return save_checkpoint(model, path, label_names=labels, feature_config=FeatureConfig(frames=128))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fastast_deploy.checkpoints.native import load_model

    root = tmp_path_factory.mktemp("verify")
    ckpt = make_checkpoint(root / "tiny.safetensors")
    out = {"ckpt": ckpt, "root": root}
    for r in (8, 16):
        model = load_model(ckpt, tome_r=r)
        out[f"r{r}"] = export_onnx(model, root / f"r{r}.onnx", ExportOptions(debug_merges=True), check=False).path
    return out


def verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_passes_against_its_checkpoint_and_reports_speed(files: dict[str, Path]) -> None:
    report_path = files["root"] / "report.json"
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--num", "12", "--batch", "5",
                       "--speed-batches", "1,4", "--warmup", "1", "--iterations", "2", "--report", str(report_path))
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["schema"] == "fastast-deploy/verify" and report["version"] == 1 and report["passed"]
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert report["parity"]["merge_agreement"] == {"block0": 1.0, "block1": 1.0, "block2": 1.0}
    speed = report["speed"]
    assert speed["baseline"].startswith("r = 0") and set(speed["batches"]) == {"1", "4"}
    assert {"engine", "baseline", "speedup"} <= speed["batches"]["4"].keys()
    assert speed["flop_ratio"] > 1
    assert "0.1 s of untimed calls" in speed["timing"]  # a CPU engine is timed in steady state
    assert "speed-up" in out and "PASSED" in out


def test_another_r_fails_with_the_failing_checks_named(files: dict[str, Path]) -> None:
    saved = files["root"] / "r8-outputs.npz"
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--num", "12", "--no-speed",
                       "--save-outputs", str(saved))
    assert code == 0, out
    code, out = verify(str(files["r16"]), "--reference", str(saved), "--no-speed")
    assert code == 1
    assert "FAILED: logits within atol + rtol*|ref|" in out
    # The saved npz is what the reference side needs: same logits as the r = 8 run.
    with np.load(saved) as data:
        assert data["fbank"].shape == (12, 128, 128) and data["logits"].shape == (12, 4)


def test_polygraphy_round_trip(files: dict[str, Path]) -> None:
    inputs, outputs = files["root"] / "in.json", files["root"] / "out.json"
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--num", "6", "--batch", "4",
                       "--no-speed", "--save-inputs", str(inputs), "--save-outputs", str(outputs))
    assert code == 0, out
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    results = RunResults.load(str(outputs))
    assert [len(iterations) for _, iterations in results.lst] == [2]  # batches of 4 and 2
    assert len(load_json(str(inputs))) == 2
    code, out = verify(str(files["r8"]), "--reference", str(outputs), "--inputs", str(inputs), "--no-speed")
    assert code == 0 and "max 0 " in out, out


def test_non_finite_inputs_and_outputs_are_failures(files: dict[str, Path]) -> None:
    x = np.zeros((3, 128, 128), np.float32)
    x[1, 5, 5] = np.nan
    bad_inputs = files["root"] / "nan-in.npz"
    np.savez(bad_inputs, fbank=x)
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--inputs", str(bad_inputs),
                       "--no-speed")
    assert code == 1 and "finite inputs" in out.split("FAILED:")[1]
    bad_ref = files["root"] / "nan-ref.npz"
    logits = np.zeros((3, 4), np.float32)
    logits[2, 0] = np.inf
    np.savez(bad_ref, fbank=np.zeros((3, 128, 128), np.float32), logits=logits)
    code, out = verify(str(files["r8"]), "--reference", str(bad_ref), "--no-speed")
    assert code == 1 and "finite outputs" in out.split("FAILED:")[1]


def test_reference_with_other_labels_or_length_is_a_usage_error(files: dict[str, Path]) -> None:
    other = make_checkpoint(files["root"] / "other.safetensors", ("a", "b", "c", "d"))
    code, out = verify(str(files["r8"]), "--reference", str(other), "--num", "2", "--no-speed")
    assert code == 2 and "name their labels differently (label 0: 'a' vs 'tone')" in out
    short = files["root"] / "short.npz"
    np.savez(short, fbank=np.zeros((2, 64, 128), np.float32), logits=np.zeros((2, 4), np.float32))
    code, out = verify(str(files["r8"]), "--reference", str(short), "--no-speed")
    assert code == 2 and "another input length" in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1


def test_audio_folder_labels_and_corrupt_files(files: dict[str, Path]) -> None:
    folder = files["root"] / "audio"
    t = np.arange(16000 * 2) / 16000
    for label, wave in (("tone", np.sin(2 * np.pi * 440 * t)), ("chirp", np.sin(2 * np.pi * (200 + 900 * t) * t))):
        (folder / label).mkdir(parents=True)
        sf.write(folder / label / "a.wav", (0.3 * wave).astype(np.float32), 16000)
    (folder / "noise").mkdir()
    (folder / "noise" / "broken.wav").write_bytes(b"not a wav file")
    report_path = files["root"] / "audio-report.json"
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--inputs", str(folder), "--no-speed")
    assert code == 1 and "1 of 3 clips could not be read" in out and "--skip-unreadable" in out, out
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--inputs", str(folder), "--no-speed",
                       "--report", str(report_path), "--skip-unreadable")
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["inputs"]["clips"] == 2 and len(report["inputs"]["skipped"]) == 1
    assert "broken.wav" in report["inputs"]["skipped"][0]["file"]
    assert report["parity"]["accuracy"]["reference"] == report["parity"]["accuracy"]["engine"]
    empty = files["root"] / "empty"
    empty.mkdir()
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--inputs", str(empty), "--no-speed")
    assert code == 2 and "no audio files" in out


def test_compare_logits_hand_computed() -> None:
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    got = np.array([[1.0, 0.1, 0.0], [0.0, 2.0, 0.0]])
    figures = compare_logits(ref, got, atol=0.05, rtol=0.0)
    assert figures["max_abs_diff"] == pytest.approx(0.1)
    assert figures["within_tolerance"] == pytest.approx(5 / 6)
    assert figures["worst_excess"] == pytest.approx(0.05)
    assert figures["cosine_min"] == pytest.approx(1 / np.sqrt(1.01))
    assert figures["top1_agreement"] == 1.0


def test_ast_data_json_inputs_with_labels(files: dict[str, Path]) -> None:
    folder = files["root"] / "json-audio"
    folder.mkdir()
    t = np.arange(16000) / 16000
    sf.write(folder / "a.wav", (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 16000)
    sf.write(folder / "b.wav", (0.3 * np.sin(2 * np.pi * 900 * t)).astype(np.float32), 16000)
    (folder / "bad.wav").write_bytes(b"garbage")
    labels = files["root"] / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},{n}\n" for i, n in enumerate(LABELS)))
    data = folder / "data.json"
    data.write_text(json.dumps({"data": [{"wav": "a.wav", "labels": "/m/0,/m/2"}, {"wav": "b.wav", "labels": "/m/1"},
                                         {"wav": "bad.wav", "labels": "/m/3"}]}))
    report_path = files["root"] / "json-report.json"
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--inputs", str(data), "--labels",
                       str(labels), "--no-speed", "--report", str(report_path), "--skip-unreadable")
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["inputs"]["clips"] == 2 and [Path(s["file"]).name for s in report["inputs"]["skipped"]] == ["bad.wav"]
    assert report["parity"]["mAP"]["reference"] == pytest.approx(report["parity"]["mAP"]["engine"])
    assert "mAP" in out


def test_an_engine_that_fails_to_run_exits_1_with_the_cause(files: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime failure is no usage error: exit 1 and the cause in one line (it used to be exit 2)."""
    from fastast_deploy.engines.base import EngineError
    from fastast_deploy.engines.ort_engine import OnnxRuntimeEngine

    def broken(self: OnnxRuntimeEngine, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise EngineError("the session failed: out of memory")

    monkeypatch.setattr(OnnxRuntimeEngine, "_infer", broken)
    code, out = verify(str(files["r8"]), "--reference", str(files["ckpt"]), "--num", "2", "--no-speed")
    assert code == 1 and out.strip().splitlines() == ["Error: the session failed: out of memory"], out


def test_a_corrupt_engine_exits_1_and_a_missing_one_2(files: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    code, out = verify(str(broken), "--reference", str(files["ckpt"]), "--no-speed")
    assert code == 1 and "not a readable ONNX model" in out and len(out.strip().splitlines()) == 1, out
    code, out = verify(str(tmp_path / "missing.onnx"), "--reference", str(files["ckpt"]), "--no-speed")
    assert code == 2 and "does not exist" in out, out


def test_help_states_the_defaults_of_every_precision_from_the_table() -> None:
    from fastast_deploy.contract import PRECISIONS, TOLERANCES

    result = CliRunner().invoke(cli, ["verify", "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, key in (("--atol", "atol"), ("--rtol", "rtol"), ("--min-cosine", "min_cosine"),
                      ("--min-top1", "min_top1")):
        shown = ", ".join(f"{getattr(TOLERANCES['verify'][p], key):g} {p}" for p in PRECISIONS)
        assert f"{name} FLOAT" in text and f"[default: {shown}]" in text, (name, text)
    assert "int8" in text.split("--atol", 1)[1].split("--rtol", 1)[0]
