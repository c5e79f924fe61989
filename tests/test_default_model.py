"""The model shipped as `default`: what it is, and that it labels held-out synthetic clips of its classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from fastast_deploy.audio.synthetic import SAMPLE_RATE, make_classes, render_clip
from fastast_deploy.checkpoints.native import default_checkpoint, load_model
from fastast_deploy.cli.main import cli


def test_default_model_is_small_and_complete() -> None:
    assert default_checkpoint().stat().st_size <= 10 * 2**20
    model = load_model("default")
    assert model.schedule == (8,) * model.config.depth  # trained with Token Merging on
    dataset = model.source_info["extra"]["dataset"]
    classes = make_classes(dataset["classes"], dataset["seed"])
    assert list(model.label_names) == [c.name for c in classes]
    assert (model.feature_config.frames, model.feature_config.num_mel_bins) == (128, 64)


def test_predict_labels_held_out_clips_of_known_classes(tmp_path: Path) -> None:
    model = load_model("default")
    dataset = model.source_info["extra"]["dataset"]
    classes = make_classes(dataset["classes"], dataset["seed"])
    samples = int(round(dataset["seconds"] * SAMPLE_RATE))
    files, truth = [], []
    for cls in classes:
        for k in range(3):
            rng = np.random.default_rng([2024, cls.index, k])  # not the seeds the training clips came from
            path = tmp_path / f"{cls.index}_{k}.wav"
            sf.write(path, render_clip([cls], samples, rng), SAMPLE_RATE, subtype="PCM_16")
            files.append(str(path))
            truth.append(cls.name)
    result = CliRunner().invoke(cli, ["predict", "default", *files, "--json", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    predicted = [entry["top_k"][0]["label"] for entry in report["files"]]
    rate = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    print(f"default model top-1 on {len(files)} held-out synthetic clips: {rate:.3f}")
    assert rate >= 0.5  # right for most clips (chance: 0.1)
