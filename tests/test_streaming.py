"""Windows streamed from a file equal the windows cut from its whole-file fbank (the reference path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import fastast_deploy.audio.streaming as streaming
from fastast_deploy.audio.features import file_fbank, normalize
from fastast_deploy.audio.windows import split_windows
from fastast_deploy.errors import AudioError
from fastast_deploy.model.config import FeatureConfig


@pytest.mark.parametrize(("rate", "channels", "seconds", "hop"), [(16000, 1, 12.3, 256), (44100, 2, 9.7, 100),
                                                                 (16000, 1, 1.5, 256)])
def test_streamed_windows_equal_whole_file_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int,
                                                   channels: int, seconds: float, hop: int) -> None:
    rng = np.random.default_rng(rate)
    audio = (0.1 * rng.standard_normal((int(rate * seconds), channels)) + 0.03).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    monkeypatch.setattr(streaming, "BLOCK_SECONDS", 0.7)  # many blocks per window: block edges inside windows
    config = FeatureConfig(frames=256)
    got = np.stack(list(streaming.stream_windows(path, config, hop)))
    want = normalize(split_windows(file_fbank(path, config), config.frames, hop), config.mean, config.std).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_non_finite_audio_is_refused(tmp_path: Path) -> None:
    audio = np.zeros(16000, np.float32)
    audio[1234] = np.inf
    sf.write(tmp_path / "inf.wav", audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or inf"):
        list(streaming.stream_windows(tmp_path / "inf.wav", FeatureConfig(frames=64), 64))
