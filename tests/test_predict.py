"""`predict`: the same scores from a checkpoint, an exported .onnx and an ONNX Runtime engine, checked against
windows computed by hand through `features.waveform_to_input` and the model; windowing, pooling, scoring and
per-file errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.audio.features import waveform_to_input
from fastast_deploy.audio.windows import split_windows
from fastast_deploy.checkpoints.native import load_model, save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.engines.base import BatchRange
from fastast_deploy.engines.ort_engine import OrtBuildOptions, build_onnxruntime_engine
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.inference.runner import Runner, open_runner
from fastast_deploy.inference.scoring import run_windows, score_files
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=128, num_labels=4)
LABELS = ("dog", "rain", "siren", "wind")
FEATURES = FeatureConfig(frames=128)
RATE = 16000
SHIFT = RATE // 100  # samples per 10 ms frame


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A single-label checkpoint with its export and ORT engine, an unlabelled checkpoint without a task, and
    audio: a 3.2 s tone (2.5x the 1.28 s input), 0.8 s of noise at 22.05 kHz, a 2 s chirp as FLAC."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    ckpt = save_checkpoint(model, root / "single.safetensors", label_names=LABELS, feature_config=FEATURES,
                           extra={"task": "singlelabel"})
    plain = save_checkpoint(model, root / "plain.safetensors", feature_config=FEATURES)
    onnx = export_onnx(load_model(ckpt), root / "single.onnx", ExportOptions(), check=False).path
    engine = build_onnxruntime_engine(onnx, root / "single.ort.onnx", OrtBuildOptions(max_batch=16)).path
    rng = np.random.default_rng(0)
    t = np.arange(int(3.2 * RATE)) / RATE
    sf.write(root / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05, RATE)  # with a DC offset
    sf.write(root / "noise.wav", 0.1 * rng.standard_normal(int(0.8 * 22050)), 22050)
    t2 = np.arange(2 * RATE) / RATE
    sf.write(root / "chirp.flac", 0.2 * np.sin(2 * np.pi * (200 + 400 * t2) * t2), RATE)
    (root / "text.wav").write_text("not audio at all")
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "silent.wav", np.zeros(0), RATE)  # a valid header, no samples
    return {"ckpt": ckpt, "plain": plain, "onnx": onnx, "engine": engine, "root": root}


def run(*args: Any) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def predict_json(*args: Any) -> dict[str, Any]:
    code, out, err = run("predict", *args, "--json", "--all-scores")
    assert code == 0, err
    return json.loads(out)


def by_hand(model_path: Path, wav: Path, hop_frames: int, pool: str, activation: str) -> np.ndarray:
    """Pooled scores from windows cut out of the waveform, each through waveform_to_input and the model."""
    model = load_model(model_path).eval()
    waveform, rate = sf.read(wav, dtype="float32")
    assert rate == RATE
    frames = 1 + (len(waveform) - 400) // SHIFT  # 25 ms frames every 10 ms, snip_edges
    count = 1 if frames <= 128 else 1 + -(-(frames - 128) // hop_frames)
    x = torch.stack([waveform_to_input(torch.from_numpy(waveform[i * hop_frames * SHIFT :]), RATE, FEATURES)
                     for i in range(count)])  # (W, 128, 128)
    with torch.inference_mode():
        logits = model(x).double()
    scores = logits.softmax(-1) if activation == "softmax" else logits.sigmoid()
    return (scores.mean(0) if pool == "mean" else scores.amax(0)).numpy()


def test_three_paths_agree_with_each_other_and_with_hand_made_windows(files: dict[str, Path]) -> None:
    root = files["root"]
    audio = [root / "tone.wav", root / "noise.wav", root / "chirp.flac"]
    reports = {kind: predict_json(files[kind], *audio) for kind in ("ckpt", "onnx", "engine")}
    reports["batch 2"] = predict_json(files["engine"], *audio, "--batch", "2")  # windows of two files per call
    assert [r["backend"] for r in reports.values()] == ["pytorch"] + 3 * ["onnxruntime"]
    for report in reports.values():
        assert report["task"] == "singlelabel" and report["activation"] == "softmax" and report["failed"] == 0
        assert [f["windows"] for f in report["files"]] == [3, 1, 2]
        assert report["labels"] == list(LABELS)
    reference = reports["ckpt"]["files"]
    for kind in ("onnx", "engine", "batch 2"):
        for ours, ref in zip(reports[kind]["files"], reference, strict=True):
            assert [t["label"] for t in ours["top_k"]] == [t["label"] for t in ref["top_k"]]
            np.testing.assert_allclose(ours["scores"], ref["scores"], atol=1e-4)
    # independent: windows of the waveform itself through waveform_to_input (tone: 3 windows, DC offset)
    expected = by_hand(files["ckpt"], root / "tone.wav", 128, "mean", "softmax")
    np.testing.assert_allclose(reference[0]["scores"], expected, atol=1e-4)
    np.testing.assert_allclose(sum(reference[0]["scores"]), 1.0, atol=1e-9)  # mean of softmax rows


def test_smaller_hop_gives_more_windows_and_pooling_matches_by_hand(files: dict[str, Path]) -> None:
    tone = files["root"] / "tone.wav"
    for pool in ("mean", "max"):
        report = predict_json(files["engine"], tone, "--hop", "0.64", "--pool", pool)
        entry = report["files"][0]
        assert entry["windows"] == 4  # 318 frames: starts 0, 64, 128, 192
        assert report["hop_s"] == pytest.approx(0.64) and report["window_s"] == pytest.approx(1.28)
        np.testing.assert_allclose(entry["scores"], by_hand(files["ckpt"], tone, 64, pool, "softmax"), atol=1e-4)
    mean = predict_json(files["engine"], tone, "--hop", "0.64")["files"][0]["scores"]
    peak = predict_json(files["engine"], tone, "--hop", "0.64", "--pool", "max")["files"][0]["scores"]
    assert all(p >= m for p, m in zip(peak, mean, strict=True)) and sum(peak) > 1.0  # max of softmax rows


def test_split_windows_counts_and_pads() -> None:
    features = torch.arange(320 * 2, dtype=torch.float32).reshape(320, 2)  # 2.5 windows of 128
    windows = split_windows(features, 128, 128)
    assert windows.shape == (3, 128, 2)
    assert torch.equal(windows[2, :64], features[256:]) and not windows[2, 64:].any()
    assert split_windows(features, 128, 64).shape[0] == 4
    assert split_windows(features, 128, 1).shape[0] == 1 + 192
    short = split_windows(features[:50], 128, 128)
    assert short.shape == (1, 128, 2) and torch.equal(short[0, :50], features[:50]) and not short[0, 50:].any()


def test_static_batches_are_padded_and_padding_is_dropped() -> None:
    calls = []

    def infer(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.sum(axis=(1, 2))[:, None].astype(np.float32)  # (n, 1)

    class Fake:
        def infer(self, batch: np.ndarray) -> np.ndarray:
            return infer(batch)

        def close(self) -> None:
            pass

    runner = Runner("fake", "test", FEATURES, ["a"], ("a",), None, BatchRange(4, 4, 4), Fake())
    windows = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 3), np.float32)  # (6, 2, 3)
    logits = run_windows(runner, windows, 4)
    assert calls == [4, 4] and logits[:, 0].tolist() == [6.0 * i for i in range(6)]


def test_a_runner_puts_torch_threads_back_when_closed(files: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with open_runner(files["ckpt"], threads=other) as runner:
        assert torch.get_num_threads() == other  # the runner's count while it is open
        result, = score_files(runner, [files["root"] / "noise.wav"])
        assert result.error is None and result.windows == 1
    assert torch.get_num_threads() == before


def test_sigmoid_where_no_task_is_recorded_and_default_label_names(files: dict[str, Path]) -> None:
    code, out, _ = run("predict", files["plain"], files["root"] / "noise.wav", "--top-k", "2")
    assert code == 0
    assert "sigmoid (the model records no task; multi-label assumed)" in out
    lines = out.strip().splitlines()
    assert lines[-3].endswith("noise.wav (1 window)") and len(lines) == 5  # header, blank, file, 2 labels
    assert all(line.split()[-1].startswith("label_") for line in lines[-2:])
    report = predict_json(files["plain"], files["root"] / "noise.wav")
    assert report["activation"] == "sigmoid" and report["task"] is None
    scores = report["files"][0]["scores"]
    assert all(0 < s < 1 for s in scores) and abs(sum(scores) - 1) > 1e-3


def test_bad_files_get_one_line_each_and_the_rest_is_predicted(files: dict[str, Path]) -> None:
    root = files["root"]
    bad = [root / "text.wav", root / "empty.wav", root / "silent.wav", root / "missing.wav"]
    good = [root / "noise.wav", root / "tone.wav"]
    code, out, err = run("predict", files["onnx"], good[0], *bad, good[1])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == len(bad)
    for line, path in zip(lines, bad, strict=True):
        assert line.startswith(f"error: {path}: ")
    assert "0 bytes" in lines[1] and "0 samples" in lines[2] and "does not exist" in lines[3]
    assert f"{good[0]} (1 window)" in out and f"{good[1]} (3 windows)" in out
    code, out, err = run("predict", files["onnx"], good[0], bad[0], "--json")
    report = json.loads(out)
    assert code == 1 and report["failed"] == 1 and len(err.strip().splitlines()) == 1
    assert report["files"][0]["top_k"] and "error" in report["files"][1] and "top_k" not in report["files"][1]
    assert len(report["files"][0]["top_k"]) == 4 and "scores" not in report["files"][0]


@pytest.mark.parametrize("model, args, fragment", [
    ("ckpt", ("--hop", "2"), "hop 2.0 s is 200 frames; it must be 1 to 128 frames"),
    ("ckpt", ("--provider", "cpu"), "--provider applies to an engine"),
    ("engine", ("--batch", "32"), "--batch 32 is outside the model's batch range 1..16"),
])
def test_settings_the_model_cannot_take_fail_in_one_line(files: dict[str, Path], model: str, args: tuple[str, ...],
                                                        fragment: str) -> None:
    code, out, err = run("predict", files[model], files["root"] / "noise.wav", *args)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], out + err


def test_missing_model_fails_in_one_line(files: dict[str, Path]) -> None:
    code, out, err = run("predict", files["root"] / "nothing.onnx", files["root"] / "noise.wav")
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "nothing.onnx does not exist" in lines[0]
