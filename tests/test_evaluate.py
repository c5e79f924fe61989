"""`evaluate`: accuracy and per-class figures on a hand-labelled case (a checkpoint, its ONNX export and a CNN),
mAP against hand-computed APs, one-line errors, and --threads honoured by evaluate, predict and train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fastast_deploy.audio.datasets import fbank_cache, normalize_cache, read_data_json
from fastast_deploy.audio.labels import read_label_csv
from fastast_deploy.audio.synthetic import SyntheticConfig, make_synthetic
from fastast_deploy.checkpoints.cnn import save_cnn
from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.evaluation.evaluate import score
from fastast_deploy.model.cnn import CNNClassifier, CNNConfig
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model

FRAMES = 48  # 0.5 s clips


@pytest.fixture(autouse=True)
def keep_threads() -> Any:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-class data set relabelled by hand from an independent forward pass: the first 6 clips get the label the
    model picks (right), the next 4 another label (wrong)."""
    root = tmp_path_factory.mktemp("eval")
    make_synthetic(root / "data", SyntheticConfig(classes=3, clips_per_class=6, seconds=0.5, val_fraction=0.5))
    labels = read_label_csv(root / "data" / "labels.csv")
    features = FeatureConfig(num_mel_bins=32, frames=FRAMES, mean=-5.0, std=4.0)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_size("tiny", depth=2, input_frames=FRAMES, num_mel_bins=32, num_labels=3),
                        TomeConfig((4, 4)))
    save_checkpoint(model, root / "model.safetensors", label_names=labels.names, feature_config=features,
                    extra={"task": "singlelabel"})
    clips = [*read_data_json(root / "data" / "train.json", labels).examples,
             *read_data_json(root / "data" / "val.json", labels).examples][:10]
    x = normalize_cache(fbank_cache([c.path for c in clips], features), features)
    with torch.no_grad():
        picked = model(x).argmax(-1).tolist()
    truth = [p if i < 6 else (p + 1) % 3 for i, p in enumerate(picked)]
    rows = [{"wav": str(c.path), "labels": labels.mids[t]} for c, t in zip(clips, truth, strict=True)]
    (root / "hand.json").write_text(json.dumps({"data": rows}))
    return {"root": root, "labels": labels, "picked": picked, "truth": truth, "model": model, "features": features}


def run(*args: Any) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def expected_per_class(case: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(clips, correct, predicted) per class, counted by hand from the relabelled case."""
    rows = []
    for k in range(3):
        clips = sum(1 for t in case["truth"] if t == k)
        correct = sum(1 for t, p in zip(case["truth"], case["picked"], strict=True) if t == k and p == k)
        rows.append((clips, correct, sum(1 for p in case["picked"] if p == k)))
    return rows


def check_report(report: dict[str, Any], case: dict[str, Any]) -> None:
    assert report["metric"] == "accuracy" and report["clips"] == 10
    assert report["value"] == pytest.approx(0.6) and report["correct"] == 6
    got = [(c["clips"], c["correct"], c["predicted"]) for c in report["per_class"]]
    assert got == expected_per_class(case)
    assert [c["label"] for c in report["per_class"]] == list(case["labels"].names)


def test_checkpoint_accuracy_and_per_class_on_a_hand_labelled_case(case: dict[str, Any]) -> None:
    root = case["root"]
    code, out = run("evaluate", root / "model.safetensors", "--data", root / "hand.json", "--labels",
                    root / "data" / "labels.csv", "--json", "--batch", "3")
    assert code == 0, out
    check_report(json.loads(out), case)
    code, text = run("evaluate", root / "model.safetensors", "--data", root / "hand.json", "--labels",
                     root / "data" / "labels.csv")
    assert code == 0 and "accuracy 0.6000 (6/10 clips)" in text


def test_onnx_export_scores_the_same(case: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    root = case["root"]
    code, out = run("export", root / "model.safetensors", "-o", tmp_path / "m.onnx")
    assert code == 0, out
    code, out = run("evaluate", tmp_path / "m.onnx", "--data", root / "hand.json", "--labels",
                    root / "data" / "labels.csv", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["backend"] == "onnxruntime"
    check_report(report, case)


def test_waveform_in_export_scores_the_same(case: dict[str, Any], tmp_path: Path) -> None:
    """The engine computes the features itself: evaluate feeds it each file's audio, window by window."""
    pytest.importorskip("onnxruntime")
    root = case["root"]
    code, out = run("export", root / "model.safetensors", "-o", tmp_path / "w.onnx", "--input", "waveform")
    assert code == 0, out
    code, out = run("evaluate", tmp_path / "w.onnx", "--data", root / "hand.json", "--labels",
                    root / "data" / "labels.csv", "--json", "--batch", "4")
    assert code == 0, out
    check_report(json.loads(out), case)


def test_cnn_checkpoint_is_evaluated_and_predicted(case: dict[str, Any], tmp_path: Path) -> None:
    root, labels = case["root"], case["labels"]
    torch.manual_seed(1)
    cnn = CNNClassifier(CNNConfig(num_labels=3, input_frames=FRAMES, num_mel_bins=32, width=4)).eval()
    save_cnn(cnn, tmp_path / "cnn.safetensors", label_names=labels.names, feature_config=case["features"],
             extra={"task": "singlelabel"})
    data = read_data_json(root / "hand.json", labels)
    x = normalize_cache(fbank_cache([e.path for e in data.examples], case["features"]), case["features"])
    with torch.no_grad():
        picked = cnn(x).argmax(-1).numpy()
    truth = np.array([e.labels[0] for e in data.examples])
    code, out = run("evaluate", tmp_path / "cnn.safetensors", "--data", root / "hand.json", "--labels",
                    root / "data" / "labels.csv", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["correct"] == int((picked == truth).sum()) and report["backend"] == "pytorch (CNN)"
    code, out = run("predict", tmp_path / "cnn.safetensors", data.examples[0].path, "--json")
    assert code == 0, out
    assert json.loads(out)["activation"] == "softmax"  # the task the CNN checkpoint records


def test_labels_are_matched_by_name(case: dict[str, Any], tmp_path: Path) -> None:
    # The same clips under a label CSV listing the labels in another order score the same.
    root, labels = case["root"], case["labels"]
    order = [2, 0, 1]
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n" + "".join(
        f"{i},{labels.mids[k]},{labels.names[k]}\n" for i, k in enumerate(order)))
    code, out = run("evaluate", root / "model.safetensors", "--data", root / "hand.json", "--labels",
                    tmp_path / "labels.csv", "--json")
    assert code == 0, out
    assert json.loads(out)["value"] == pytest.approx(0.6)
    (tmp_path / "other.csv").write_text("index,mid,display_name\n0,/x,x\n1,/y,y\n2,/z,z\n")
    rows = [{"wav": r["wav"], "labels": "/x"} for r in json.loads((root / "hand.json").read_text())["data"]]
    (tmp_path / "other.json").write_text(json.dumps({"data": rows}))
    code, out = run("evaluate", root / "model.safetensors", "--data", tmp_path / "other.json", "--labels",
                    tmp_path / "other.csv")
    assert code != 0 and out.strip().splitlines()[-1].startswith("Error:") and "not among the 3 outputs" in out


def test_map_per_class_matches_hand_computed_ap() -> None:
    # label 0: positives at scores 0.9 and 0.4; ranks 1 and 3 -> AP = (1/1 + 2/3) / 2
    # label 1: one positive at score 0.2, ranked last of 4 -> AP = 1/4
    logits = np.array([[0.9, 0.8], [0.5, 0.6], [0.4, 0.7], [0.1, 0.2]])
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 1]], dtype=float)
    report = score(logits, targets, ("a", "b"), "multilabel")
    aps = [c["ap"] for c in report["per_class"]]
    assert aps == pytest.approx([(1 + 2 / 3) / 2, 1 / 4])
    assert report["metric"] == "mAP" and report["value"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 4) / 2)


def test_threads_are_honoured(case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = case["root"]
    args = ("--data", root / "hand.json", "--labels", root / "data" / "labels.csv")
    torch.set_num_threads(2)
    counts: list[int] = []
    original_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (counts.append(n), original_set(n))[1])
    assert run("evaluate", root / "model.safetensors", *args, "--threads", "1")[0] == 0
    assert counts[0] == 1 and torch.get_num_threads() == 2  # used while scoring, then put back
    counts.clear()
    wav = json.loads((root / "hand.json").read_text())["data"][0]["wav"]
    assert run("predict", root / "model.safetensors", wav, "--threads", "1")[0] == 0
    assert counts[0] == 1 and torch.get_num_threads() == 2
    monkeypatch.undo()
    # ONNX Runtime's intra-op threads: what the session is opened with
    pytest.importorskip("onnxruntime")
    import fastast_deploy.engines.ort_engine as ort_engine

    seen: list[int] = []
    original = ort_engine._session_options

    def spy(level: str, threads: int) -> Any:
        seen.append(threads)
        return original(level, threads)

    monkeypatch.setattr(ort_engine, "_session_options", spy)
    assert run("export", root / "model.safetensors", "-o", tmp_path / "m.onnx")[0] == 0
    seen.clear()
    assert run("evaluate", tmp_path / "m.onnx", *args, "--threads", "1")[0] == 0
    assert run("predict", tmp_path / "m.onnx", wav, "--threads", "3")[0] == 0
    assert seen == [1, 3]


def test_info_takes_the_size_of_a_new_model() -> None:
    code, out = run("info", "tiny", "--mel-bins", "64", "--frames", "98", "--tome-r", "3", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert (report["config"]["num_mel_bins"], report["config"]["input_frames"]) == (64, 98)
    assert report["token_counts"][0] == 2 + 5 * 9  # (64 - 16) // 10 + 1 = 5 by (98 - 16) // 10 + 1 = 9 patches
    code, out = run("info", "default", "--mel-bins", "64")
    assert code != 0 and "--mel-bins applies to a new model" in out.strip().splitlines()[-1]


def long_clip(case: dict[str, Any], path: Path) -> Path:
    """Three clips of different classes one after the other (1.5 s: windows of 48 frames cover it in 3 or 4)."""
    data = read_data_json(case["root"] / "hand.json", case["labels"])
    by_class = {e.labels[0]: e.path for e in data.examples}
    parts = [sf.read(by_class[k], dtype="float32") for k in sorted(by_class)]
    sf.write(path, np.concatenate([wave for wave, _ in parts]), parts[0][1])
    return path


def test_evaluate_scores_a_long_file_as_predict_does(case: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fastast_deploy.audio.features import load_input
    from fastast_deploy.evaluation.evaluate import clip_scores
    from fastast_deploy.inference.runner import open_runner

    root, labels = case["root"], case["labels"]
    wav = long_clip(case, tmp_path / "long.wav")
    code, out = run("predict", root / "model.safetensors", wav, "--json", "--all-scores")
    assert code == 0, out
    predicted = json.loads(out)["files"][0]
    wave, rate = sf.read(wav)
    frames = 1 + (len(wave) * 16000 // rate - 400) // 160  # 25 ms frames every 10 ms at the model's 16 kHz
    count = 1 + -(-(frames - FRAMES) // FRAMES)
    assert count >= 3 and predicted["windows"] == count
    with torch.no_grad():  # the old policy, the first window only, scores otherwise
        first = case["model"](load_input(wav, case["features"])[None]).softmax(-1)[0].numpy()
    assert np.abs(first - np.array(predicted["scores"])).max() > 1e-3
    # no whole-file read or fbank cache on evaluate's path: windows stream in constant memory
    import fastast_deploy.audio.datasets as datasets
    import fastast_deploy.audio.features as features

    def whole(*_: Any, **__: Any) -> None:
        raise AssertionError("a whole-file read on evaluate's path")

    for module, name in ((datasets, "fbank_cache"), (datasets, "first_fbank"), (features, "file_fbank"),
                         (features, "read_audio")):
        monkeypatch.setattr(module, name, whole)
    with open_runner(root / "model.safetensors") as runner:
        scores, windows, _ = clip_scores(runner, [wav], 3)
    assert windows == count
    np.testing.assert_allclose(scores[0], predicted["scores"], atol=1e-6)
    # the report's decision is predict's top-1: the clip labelled with it is right
    top = predicted["top_k"][0]["index"]
    (tmp_path / "long.json").write_text(json.dumps({"data": [{"wav": str(wav), "labels": labels.mids[top]}]}))
    code, out = run("evaluate", root / "model.safetensors", "--data", tmp_path / "long.json", "--labels",
                    root / "data" / "labels.csv", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["correct"] == 1 and report["windows"] == count and report["pool"] == "mean"


def test_library_calls_leave_logging_and_torch_threads_as_they_were(case: dict[str, Any], tmp_path: Path) -> None:
    import logging

    from fastast_deploy.evaluation.evaluate import EvaluateOptions, evaluate
    from fastast_deploy.inference.runner import open_runner
    from fastast_deploy.serving.predict import predict_files

    root = case["root"]
    level, disabled = logging.root.level, logging.root.manager.disable
    torch.set_num_threads(2)
    try:
        logging.root.setLevel(logging.INFO)
        logging.disable(logging.DEBUG)
        report = evaluate(root / "model.safetensors", root / "hand.json", str(root / "data" / "labels.csv"),
                          EvaluateOptions(threads=1))
        assert report["correct"] == 6
        with open_runner(root / "model.safetensors", threads=1) as runner:
            assert [r.error for r in predict_files(runner, [long_clip(case, tmp_path / "long.wav")])] == [None]
        assert torch.get_num_threads() == 2
        assert (logging.root.level, logging.root.manager.disable) == (logging.INFO, logging.DEBUG)
    finally:
        logging.root.setLevel(level)
        logging.disable(disabled)
