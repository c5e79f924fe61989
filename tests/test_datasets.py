"""Datasets for training: the synthetic generator, AST JSON / folder / ESC-50 readers, label and teacher-logits files,
and the evaluation metrics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fastast_deploy.audio.datasets import detect_task, fbank_cache, handle_missing, load_dataset, normalize_cache
from fastast_deploy.audio.features import load_input
from fastast_deploy.audio.labels import LabelSet, read_label_csv
from fastast_deploy.audio.synthetic import FAMILIES, SAMPLE_RATE, SyntheticConfig, make_classes, make_synthetic
from fastast_deploy.errors import DatasetError
from fastast_deploy.metrics import accuracy, average_precision, mean_average_precision
from fastast_deploy.model.config import FeatureConfig
from fastast_deploy.training.teachers import read_teacher_logits, write_teacher_logits

SMALL = SyntheticConfig(classes=3, clips_per_class=5, seconds=0.5, seed=1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, SMALL)
    return root


def test_synthetic_layout(synthetic: Path) -> None:
    train = json.loads((synthetic / "train.json").read_text())["data"]
    val = json.loads((synthetic / "val.json").read_text())["data"]
    assert len(train) == 12 and len(val) == 3  # round(5 * 0.2) = 1 validation clip per class
    with (synthetic / "labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "mid", "display_name"]
    mids = [r[1] for r in rows[1:]]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"] and len(set(mids)) == 3
    for entry in train + val:
        assert entry["labels"] in mids  # one label per clip
        data, rate = sf.read(synthetic / entry["wav"])
        assert rate == SAMPLE_RATE and data.shape == (int(0.5 * SAMPLE_RATE),)
        assert 0 < np.abs(data).max() <= 0.9
    assert {e["labels"] for e in val} == set(mids)  # every class is validated


def test_synthetic_is_seeded(tmp_path: Path, synthetic: Path) -> None:
    make_synthetic(tmp_path / "same", SMALL)
    make_synthetic(tmp_path / "other", SyntheticConfig(**{**SMALL.__dict__, "seed": 2}))
    wav = "audio/train/synth_000_0003.wav"
    assert (tmp_path / "same" / wav).read_bytes() == (synthetic / wav).read_bytes()
    assert (tmp_path / "other" / wav).read_bytes() != (synthetic / wav).read_bytes()


def test_classes_of_one_family_take_disjoint_bands() -> None:
    classes = make_classes(3 * len(FAMILIES), seed=5)
    for family in FAMILIES:
        bands = sorted((c.low, c.high) for c in classes if c.family == family)
        assert len(bands) == 3
        for (_, high), (low, _) in zip(bands, bands[1:], strict=False):
            assert high < low


def test_tone_clip_peaks_inside_its_band(tmp_path: Path) -> None:
    # The loudest frequency of a tone clip lies in its class's band, whatever the noise and gain.
    make_synthetic(tmp_path, SyntheticConfig(classes=2, clips_per_class=4, seconds=1.0, seed=3))
    tone = make_classes(2, seed=3)[0]
    assert tone.family == "tone"
    for clip in sorted((tmp_path / "audio").glob("*/synth_000_*.wav")):
        data, rate = sf.read(clip)
        spectrum = np.abs(np.fft.rfft(data * np.hanning(len(data))))
        peak = np.fft.rfftfreq(len(data), 1 / rate)[spectrum.argmax()]
        assert tone.low * 0.98 <= peak <= tone.high * 1.02, (clip.name, peak, tone)


def test_multilabel_synthetic(tmp_path: Path) -> None:
    make_synthetic(tmp_path, SyntheticConfig(classes=4, clips_per_class=6, seconds=0.3, max_events=3))
    labels = read_label_csv(tmp_path / "labels.csv")
    data = load_dataset(tmp_path / "train.json", labels)
    counts = [len(e.labels) for e in data.examples]
    assert min(counts) >= 1 and max(counts) <= 3 and max(counts) > 1
    assert detect_task(data) == "multilabel"
    targets = data.targets()
    assert targets.shape == (len(data), 4) and targets.sum(dim=1).tolist() == counts


def test_data_json_relative_paths_and_label_tokens(synthetic: Path, tmp_path: Path) -> None:
    labels = read_label_csv(synthetic / "labels.csv")
    data = load_dataset(synthetic / "train.json", labels)
    assert all(e.path.is_file() and e.path.is_relative_to(synthetic) for e in data.examples)
    assert detect_task(data) == "singlelabel"
    # Labels may also be given by display name.
    rows = json.loads((synthetic / "train.json").read_text())["data"][:2]
    rows[0]["labels"] = labels.names[2]
    rows[0]["wav"] = str((synthetic / rows[0]["wav"]).resolve())  # absolute paths are kept as they are
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    mixed = load_dataset(tmp_path / "d.json", labels)
    assert mixed.examples[0].labels == (2,) and mixed.examples[0].path.is_file()
    assert mixed.examples[1].path == tmp_path / rows[1]["wav"]  # relative to the JSON file's folder


def test_labels_missing_from_csv_are_counted(synthetic: Path, tmp_path: Path) -> None:
    full = read_label_csv(synthetic / "labels.csv")
    short = LabelSet(full.mids[:1], full.names[:1])
    with pytest.raises(DatasetError, match=r"2 labels used in .*train\.json are missing from the label set of 1"):
        load_dataset(synthetic / "train.json", short)
    with pytest.raises(DatasetError, match="give its label CSV with --labels"):
        load_dataset(synthetic / "train.json", None)


def test_missing_audio_is_reported_with_a_count(synthetic: Path, tmp_path: Path) -> None:
    rows = json.loads((synthetic / "train.json").read_text())["data"]
    rows = [{**r, "wav": str(synthetic / r["wav"])} for r in rows]
    rows[3]["wav"] = str(tmp_path / "gone1.wav")
    rows[7]["wav"] = str(tmp_path / "gone2.wav")
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    data = load_dataset(tmp_path / "d.json", read_label_csv(synthetic / "labels.csv"))
    with pytest.raises(DatasetError, match=r"2 of 12 audio files listed in .* are missing \(.*gone1\.wav"):
        handle_missing(data, skip=False, warn=print)
    warnings: list[str] = []
    kept = handle_missing(data, skip=True, warn=warnings.append)
    assert len(kept) == 10 and len(warnings) == 1 and "2 of 12" in warnings[0]


def test_folder_per_class(synthetic: Path, tmp_path: Path) -> None:
    for name, pattern in (("tone", "synth_000_*"), ("chirp", "synth_001_*")):
        (tmp_path / name).mkdir()
        for wav in (synthetic / "audio" / "train").glob(pattern + ".wav"):
            shutil.copy(wav, tmp_path / name / wav.name)
    (tmp_path / "notes.txt").write_text("not a class")
    data = load_dataset(tmp_path)
    assert data.labels.names == ("chirp", "tone")  # sorted folder names
    assert len(data) == 8 and all(e.clip.startswith(("chirp/", "tone/")) for e in data.examples)
    assert {e.labels for e in data.examples if e.clip.startswith("tone/")} == {(1,)}


def test_folder_per_class_names_a_label_with_a_slash_by_its_folder_name(synthetic: Path, tmp_path: Path) -> None:
    """A label such as "clicks 12-18/s" cannot be a folder name; its folder is "clicks 12-18_s" (quickstart's)."""
    for name, pattern in (("clicks 12-18_s", "synth_000_*"), ("tone", "synth_001_*")):
        (tmp_path / name).mkdir()
        for wav in (synthetic / "audio" / "train").glob(pattern + ".wav"):
            shutil.copy(wav, tmp_path / name / wav.name)
    labels = LabelSet(("/m/t", "/m/c"), ("tone", "clicks 12-18/s"))
    data = load_dataset(tmp_path, labels)
    assert {e.labels for e in data.examples if e.clip.startswith("clicks")} == {(1,)}
    assert {e.labels for e in data.examples if e.clip.startswith("tone/")} == {(0,)}


def test_esc50_csv_folds_and_derived_labels(synthetic: Path, tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    (tmp_path / "meta").mkdir()
    rows = []
    for i, wav in enumerate(sorted((synthetic / "audio" / "train").glob("*.wav"))):
        shutil.copy(wav, tmp_path / "audio" / wav.name)
        target = int(wav.name.split("_")[1])
        rows.append([wav.name, 1 + i % 4, target, f"class{target}"])
    with (tmp_path / "meta" / "esc50.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["filename", "fold", "target", "category"], *rows])
    train = load_dataset(tmp_path / "meta" / "esc50.csv", folds=lambda fold: fold != 4)
    val = load_dataset(tmp_path / "meta" / "esc50.csv", train.labels, folds=lambda fold: fold == 4)
    assert train.labels.names == ("class0", "class1", "class2")
    assert len(train) == 9 and len(val) == 3
    assert all(e.path.parent == tmp_path / "audio" and e.path.is_file() for e in train.examples + val.examples)
    for e in train.examples:
        assert e.labels == (int(e.clip.split("_")[1]),)


def test_fbank_cache_matches_the_feature_pipeline(synthetic: Path) -> None:
    data = load_dataset(synthetic / "val.json", read_label_csv(synthetic / "labels.csv"))
    config = FeatureConfig(num_mel_bins=64, frames=60, mean=-5.0, std=3.0)
    cached = normalize_cache(fbank_cache([e.path for e in data.examples], config), config)
    want = torch.stack([load_input(e.path, config) for e in data.examples])
    assert cached.shape == (3, 60, 64)
    torch.testing.assert_close(cached, want, rtol=0, atol=1e-6)


def test_teacher_logits_files(synthetic: Path, tmp_path: Path) -> None:
    train = load_dataset(synthetic / "train.json", read_label_csv(synthetic / "labels.csv"))
    logits = torch.arange(len(train) * 3, dtype=torch.float32).reshape(len(train), 3)
    # Rows stored in reverse order come back in training-set order through their clip ids.
    path = tmp_path / "t.npz"
    write_teacher_logits(path, logits.flip(0), train.clips[::-1], train.labels.names)
    assert torch.equal(read_teacher_logits(path, train), logits)
    np.savez(tmp_path / "plain.npz", logits=logits.numpy())  # no clips: data order
    assert torch.equal(read_teacher_logits(tmp_path / "plain.npz", train), logits)
    np.savez(tmp_path / "wide.npz", logits=np.zeros((len(train), 5), np.float32), clips=np.array(train.clips))
    with pytest.raises(DatasetError, match=r"shape \(12, 5\), expected \(clips, 3\)"):
        read_teacher_logits(tmp_path / "wide.npz", train)
    np.savez(tmp_path / "few.npz", logits=logits[:10].numpy(), clips=np.array(train.clips[:10]))
    with pytest.raises(DatasetError, match="lack 2 of 12 training clips"):
        read_teacher_logits(tmp_path / "few.npz", train)
    np.savez(tmp_path / "short.npz", logits=logits[:10].numpy())
    with pytest.raises(DatasetError, match="10 rows and no clips array"):
        read_teacher_logits(tmp_path / "short.npz", train)
    np.savez(tmp_path / "named.npz", logits=logits.numpy(), clips=np.array(train.clips),
             labels=np.array(["a", "b", "c"]))
    with pytest.raises(DatasetError, match="for other labels"):
        read_teacher_logits(tmp_path / "named.npz", train)


def test_accuracy_and_average_precision_by_hand() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    targets = np.eye(3)[[0, 1, 2, 2]]
    assert accuracy(logits, targets) == 0.75
    # Scores 0.9 0.8 0.7 0.6 with positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # A label without positives is left out of the mean.
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.4], [0.7, 0.3, 0.3], [0.6, 0.4, 0.2]])
    positives = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    assert mean_average_precision(scores, positives) == pytest.approx((5 / 6 + (1 / 2 + 2 / 4) / 2) / 2)
