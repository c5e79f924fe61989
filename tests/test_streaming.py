"""Windows streamed from a file equal the windows cut from its whole-file fbank (the reference path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import fastast_deploy.audio.features as features
import fastast_deploy.audio.streaming as streaming
from fastast_deploy.audio.features import file_fbank, first_fbank, normalize, pad_or_cut
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
    monkeypatch.setattr(features, "BLOCK_SECONDS", 0.7)  # many blocks per window: block edges inside windows
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


@pytest.mark.parametrize(("rate", "seconds", "block"), [(16000, 1.5, 10.0), (16000, 12.3, 10.0), (44100, 9.7, 0.7),
                                                       (44100, 2.0, 10.0)])
def test_first_window_equals_the_whole_file_fbank_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int,
                                                      seconds: float, block: float) -> None:
    """The first window, read alone, is the whole-file fbank cut to the window: exactly where the clip ends
    within what was read (same rate), to float rounding where the clip mean is left to per-frame DC removal."""
    rng = np.random.default_rng(7)
    audio = (0.1 * rng.standard_normal(int(rate * seconds)) + 0.03).astype(np.float32)
    path = tmp_path / "clip.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    monkeypatch.setattr(features, "BLOCK_SECONDS", block)
    config = FeatureConfig(frames=256)
    got = first_fbank(path, config).numpy()
    want = pad_or_cut(file_fbank(path, config), config.frames).numpy()
    assert got.shape == (256, config.num_mel_bins)
    if rate == config.sample_rate and seconds < block:
        assert np.array_equal(got, want)
    assert np.abs(got - want).max() <= 1e-3
