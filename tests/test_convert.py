"""convert: a trained run into a Hugging Face AST directory that transformers' own model and pipeline run like this
project's model at r = 0, back into this project's format with its ToMe schedule, into the original AST .pth
layout; config fields that round-trip; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from click.testing import CliRunner

from fastast_deploy.audio.features import load_input
from fastast_deploy.audio.labels import read_label_csv
from fastast_deploy.audio.synthetic import SyntheticConfig, make_synthetic
from fastast_deploy.checkpoints.cnn import save_cnn
from fastast_deploy.checkpoints.loading import model_extra
from fastast_deploy.checkpoints.native import load_model, save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.engines.onnx_model import read_onnx_model
from fastast_deploy.model.cnn import CNNClassifier, CNNConfig
from fastast_deploy.model.config import FeatureConfig, ModelConfig
from fastast_deploy.model.fastast import build_model

transformers = pytest.importorskip("transformers")

CLIPS = 20
SCORE_TOL = 1e-4  # every label's probability, transformers' pipeline (its own feature extractor) against predict
TRAIN = ("--depth", "2", "--tome-r", "8", "--frames", "128", "--epochs", "3", "--batch-size", "6", "--lr", "1e-3",
         "--quiet")


def run(*args: str) -> tuple[int, list[str]]:
    """``fastast-deploy ARGS`` in this process: exit code and the non-empty output lines (stdout and stderr)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, SyntheticConfig(classes=3, clips_per_class=8, seconds=0.5, val_fraction=0.25))
    return root


@pytest.fixture(scope="module")
def run_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    code, lines = run("train", "--train", data / "train.json", "--val", data / "val.json", "--labels",
                      data / "labels.csv", "-o", out, *TRAIN)
    assert code == 0, lines
    return out


@pytest.fixture(scope="module")
def hf_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "fastast-tiny"
    code, lines = run("convert", run_dir, "-o", out, "--to", "hf")
    assert code == 0 and len(lines) == 1, lines
    return out


@pytest.fixture(scope="module")
def clips(data: Path) -> list[Path]:
    return sorted((data / "audio").rglob("*.wav"))[:CLIPS]


def fbank(model: torch.nn.Module, clips: list[Path]) -> torch.Tensor:
    return torch.stack([load_input(c, model.feature_config) for c in clips])  # (B, T, F)


def test_transformers_runs_the_directory_as_predict_does_at_r0(run_dir: Path, hf_dir: Path, clips: list[Path],
                                                                tmp_path: Path) -> None:
    # predict of the run at r = 0 (the run's checkpoint saved again without its schedule), top-1 label per clip
    ours = load_model(run_dir / "best", tome_r=0)
    save_checkpoint(ours, tmp_path / "r0.safetensors", extra=model_extra(ours))
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "r0.safetensors"), *map(str, clips), "--json",
                                      "--all-scores"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.output)["files"]
    want = [f["top_k"][0]["label"] for f in files]
    labels = json.loads(result.output)["labels"]
    # transformers' pipeline on the same waveforms, its own feature extractor from preprocessor_config.json
    classifier = transformers.pipeline("audio-classification", model=str(hf_dir))
    got, worst = [], 0.0
    for clip, predicted in zip(clips, files, strict=True):
        wave, rate = sf.read(clip, dtype="float32")
        answer = {a["label"]: a["score"] for a in classifier({"raw": wave, "sampling_rate": rate}, top_k=None)}
        got.append(max(answer, key=answer.get))
        # every label's score, not only the winner's: agreement holds even where a short run favours one class
        worst = max(worst, max(abs(answer[name] - score) for name, score in zip(labels, predicted["scores"],
                                                                                 strict=True)))
    assert len(got) == CLIPS and got == want
    assert worst < SCORE_TOL, worst

    # ASTForAudioClassification against the project's model at r = 0 on the same fbank
    theirs = transformers.ASTForAudioClassification.from_pretrained(hf_dir).eval()
    x = fbank(ours, clips)
    with torch.no_grad():
        diff = (ours(x) - theirs(x).logits).abs().max().item()
    assert diff < 1e-4, diff  # the head's LayerNorm eps: 1e-5 here, ASTConfig's one layer_norm_eps (1e-6) there


def test_directory_reads_back_with_schedule_labels_features_and_figures(run_dir: Path, hf_dir: Path,
                                                                         data: Path) -> None:
    source, back = load_model(run_dir / "best"), load_model(hf_dir)
    assert back.config == source.config and back.schedule == source.schedule == (8, 8)
    assert back.tome == source.tome
    assert back.label_names == source.label_names == read_label_csv(data / "labels.csv").names
    assert back.feature_config == source.feature_config
    assert model_extra(back)["metrics"] == model_extra(source)["metrics"]
    for key, value in source.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["problem_type"] == "single_label_classification"
    assert cfg["fastast"]["tome"]["schedule"] == [8, 8]


def test_model_card(hf_dir: Path, run_dir: Path) -> None:
    text = (hf_dir / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    labels = list(load_model(run_dir / "best").label_names)
    assert header["library_name"] == "transformers" and header["pipeline_tag"] == "audio-classification"
    assert "fastast" in header["tags"] and header["labels"] == labels
    val_acc = model_extra(load_model(run_dir / "best"))["metrics"]["val_acc"]
    assert f"| `val_acc` | {val_acc:.4g} |" in text and "r per block [8, 8]" in text
    assert all(f"`{name}`" in text for name in labels)


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_back_to_this_format_exports_as_the_run_does(run_dir: Path, hf_dir: Path, clips: list[Path],
                                                     tmp_path: Path) -> None:
    back = tmp_path / "back.safetensors"
    code, lines = run("convert", hf_dir, "-o", back, "--to", "safetensors")
    assert code == 0 and "[8, 8]" in lines[-1], lines
    for name, source in (("direct", run_dir / "best"), ("back", back)):
        assert run("export", source, "-o", tmp_path / f"{name}.onnx", "--no-check")[0] == 0
    meta = [read_onnx_model(tmp_path / f"{n}.onnx").metadata for n in ("direct", "back")]
    assert meta[0]["tome"] == meta[1]["tome"] and meta[1]["tome"]["schedule"] == [8, 8]
    assert meta[0]["labels"] == meta[1]["labels"] and meta[0]["features"] == meta[1]["features"]
    x = fbank(load_model(back), clips).numpy()
    direct, again = onnx_outputs(tmp_path / "direct.onnx", x), onnx_outputs(tmp_path / "back.onnx", x)
    np.testing.assert_array_equal(again, direct)
    assert model_extra(load_model(back))["metrics"] == model_extra(load_model(run_dir / "best"))["metrics"]


def test_pth_reloads_through_the_original_reader(run_dir: Path, clips: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "fastast_10_10_.pth"
    code, lines = run("convert", run_dir, "-o", path, "--to", "pth")
    assert code == 0, lines
    notes = " ".join(lines[:-1])
    assert "label names are not kept" in notes and "[8, 8] is not kept" in notes and "feature statistics" in notes
    state = torch.load(path, weights_only=True)
    assert state["module.v.blocks.1.attn.qkv.weight"].shape == (576, 192)
    assert state["module.mlp_head.1.weight"].shape == (3, 192)
    assert state["module.v.head_dist.weight"].shape == (1000, 192)
    source, reloaded = load_model(run_dir / "best", tome_r=0), load_model(path)
    assert reloaded.source_info["format"] == "ast-original" and reloaded.config == source.config
    x = fbank(source, clips)
    with torch.no_grad():
        assert torch.equal(reloaded(x), source(x))


def test_config_fields_round_trip_through_transformers(tmp_path: Path) -> None:
    config = ModelConfig(embed_dim=64, depth=2, num_heads=4, mlp_dim=96, patch_size=12, fstride=7, tstride=9,
                         input_frames=60, num_mel_bins=40, num_labels=5, layer_norm_eps=1e-5, head_norm_eps=1e-5)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    features = FeatureConfig(sample_rate=8000, num_mel_bins=40, frames=60, mean=-3.5, std=2.5)
    save_checkpoint(model, tmp_path / "src.safetensors", feature_config=features)
    assert run("convert", tmp_path / "src.safetensors", "-o", tmp_path / "hf", "--to", "hf")[0] == 0
    theirs = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "hf").eval()
    hc = theirs.config
    assert (hc.layer_norm_eps, hc.qkv_bias, hc.frequency_stride, hc.time_stride, hc.patch_size, hc.max_length,
            hc.num_mel_bins, hc.hidden_size, hc.num_attention_heads, hc.intermediate_size) == (
            1e-5, True, 7, 9, 12, 60, 40, 64, 4, 96)
    assert hc.id2label == {i: f"LABEL_{i}" for i in range(5)}
    x = torch.randn(3, 60, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - theirs(x).logits).abs().max().item() < 1e-5
    extractor = transformers.ASTFeatureExtractor.from_pretrained(tmp_path / "hf")
    assert (extractor.sampling_rate, extractor.num_mel_bins, extractor.max_length) == (8000, 40, 60)
    assert (extractor.mean, extractor.std, extractor.do_normalize) == (-3.5, 2.5, True)
    back = load_model(tmp_path / "hf")
    assert back.config == config and back.feature_config == features
    # the original format cannot say 40 mel bins: refused, nothing written
    code, lines = run("convert", tmp_path / "src.safetensors", "-o", tmp_path / "m.pth", "--to", "pth")
    assert code == 2 and len(lines) == 1 and "128 mel bins" in lines[0], lines
    assert not (tmp_path / "m.pth").exists()


def test_bad_input_is_one_line_and_writes_nothing(run_dir: Path, hf_dir: Path, tmp_path: Path, snapshot) -> None:
    before = snapshot(hf_dir.parent)
    code, lines = run("convert", hf_dir, "-o", hf_dir, "--to", "hf")
    assert code == 1 and len(lines) == 1 and "is also SOURCE" in lines[0], lines
    code, lines = run("convert", hf_dir, "-o", hf_dir / "inner", "--to", "hf")
    assert code == 1 and len(lines) == 1 and "inside SOURCE" in lines[0], lines
    assert snapshot(hf_dir.parent) == before

    save_cnn(CNNClassifier(CNNConfig(3, 64, 128, "compact", 4)), tmp_path / "cnn.safetensors")
    code, lines = run("convert", tmp_path / "cnn.safetensors", "-o", tmp_path / "out", "--to", "hf")
    assert code == 2 and len(lines) == 1 and "CNN" in lines[0], lines
    assert not (tmp_path / "out").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, lines = run("convert", run_dir, "-o", foreign, "--to", "hf")
    assert code == 1 and len(lines) == 1 and "--force" in lines[0], lines
    assert snapshot(tmp_path) == before
    assert run("convert", run_dir, "-o", foreign, "--to", "hf", "--force")[0] == 0
    assert (foreign / "notes.txt").read_text() == "mine" and load_model(foreign).schedule == (8, 8)
    # a folder convert wrote is its own to replace
    code, lines = run("convert", foreign, "-o", tmp_path / "again", "--to", "hf", "--tome-r", "4")
    assert code == 0, lines
    assert run("convert", tmp_path / "again", "-o", foreign, "--to", "hf", "--force")[0] == 0
    assert load_model(foreign).schedule == (4, 4)
    assert run("convert", run_dir, "-o", tmp_path / "again", "--to", "hf")[0] == 0
    assert load_model(tmp_path / "again").schedule == (8, 8)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_failed_write_leaves_nothing(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from fastast_deploy.checkpoints import export_formats

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_formats, "save_file", full_disk)
    code, lines = run("convert", run_dir, "-o", tmp_path / "hf", "--to", "hf")
    assert code == 1 and len(lines) == 1 and "No space left" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_temps_of_a_killed_writer_are_removed_by_the_next(run_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)  # a process that has ended: its temps are stale
    stale_dir = tmp_path / f".hf.{pid}.abc.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    stale_file = tmp_path / f".m.pth.{pid}.abc.tmp"
    stale_file.write_bytes(b"half")
    assert run("convert", run_dir, "-o", tmp_path / "hf", "--to", "hf")[0] == 0
    assert run("convert", run_dir, "-o", tmp_path / "m.pth", "--to", "pth")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.pth"]
